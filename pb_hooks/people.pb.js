/// <reference path="../pb_data/types.d.ts" />
// A disabled person (users.disabled, set by a superuser) gets no new PocketBase token: not by
// password, OTP or OAuth2 (onRecordAuthRequest runs for each of them after the credentials
// were checked) and not by refreshing a token issued before the disable. The bridge revokes
// their NATS JWTs (pb_hooks_bridge/people.py); person_keys' create rule refuses new keys.
// A token issued before the disable stays valid until it expires (PocketBase's own
// lifetime); it can create nothing on the bus.

onRecordAuthRequest((e) => {
  if (e.record && e.record.getBool("disabled")) {
    throw new ForbiddenError("this account is disabled: ask a Cairn administrator");
  }
  e.next();
}, "users");

onRecordAuthRefreshRequest((e) => {
  if (e.record && e.record.getBool("disabled")) {
    throw new ForbiddenError("this account is disabled: ask a Cairn administrator");
  }
  e.next();
}, "users");
