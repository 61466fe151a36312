/// <reference path="../pb_data/types.d.ts" />
// A disabled person (users.disabled, set by a superuser) gets no new PocketBase token: not by
// password, OTP or OAuth2 (onRecordAuthRequest runs for each of them after the credentials
// were checked) and not by refreshing a token issued before the disable. The bridge revokes
// their NATS JWTs (pb_hooks_bridge/people.py); person_keys' create rule refuses new keys.
// Disabling a user also voids every PocketBase token already issued to them (a new token
// key), so a session from before the disable can neither run commands nor change anything.

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

onRecordUpdate((e) => {
  const before = e.record.original();
  if (e.record.getBool("disabled") && !(before && before.getBool("disabled"))) {
    e.record.refreshTokenKey();
  }
  e.next();
}, "users");
