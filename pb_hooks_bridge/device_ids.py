"""(tenant, code) -> device id, for messages that name a device only by the code in their
subject (heartbeats, a device's control requests).

Looked up in PocketBase once and cached. The event router resets an entry when a device
row is created or deleted (`forget`), so a device deleted and re-created with the same
code is found again; a lookup that raced with such a reset is not cached. Codes that name
no device are remembered for a while (`MISS_TTL`), so a flood of made-up codes costs one
query per code and minute, not one per message. Many codes of one tenant are looked up
in one query (`resolve_many`).
"""

from __future__ import annotations

import re
import time

from cairn_common.pocketbase import PocketBase

CODE = re.compile(r"^[a-z0-9-]{3,64}$")
MISS_TTL = 60.0  # seconds a code that names no device is not looked up again
MAX_MISSES = 50_000  # remembered unknown codes (oldest dropped past this)
CHUNK = 40  # codes per lookup query (the filter string stays short)


class DeviceIds:
    def __init__(self, pb: PocketBase) -> None:
        self.pb = pb
        self.ids: dict[tuple[str, str], str] = {}
        self.keys: dict[str, tuple[str, str]] = {}  # device id -> its (tenant, code)
        self.misses: dict[tuple[str, str], float] = {}  # -> monotonic time of the miss
        self.generation = 0  # bumped by forget(): lookups begun before it are not cached

    def known(self, tenant_id: str, code: str) -> str | None:
        return self.ids.get((tenant_id, code))

    def forget(self, tenant_id: str, code: str, device_id: str = "") -> None:
        """A device row was created or deleted: drop what is cached for its code (and,
        for a deleted row, for its id)."""
        self.generation += 1
        gone = self.ids.pop((tenant_id, code), None)
        if gone is not None:
            self.keys.pop(gone, None)
        self.misses.pop((tenant_id, code), None)
        if device_id:
            key = self.keys.pop(device_id, None)
            if key is not None:
                self.ids.pop(key, None)

    async def resolve(self, tenant_id: str, code: str) -> str | None:
        found = await self.resolve_many(tenant_id, [code])
        return found.get(code)

    async def resolve_many(self, tenant_id: str, codes: list[str]) -> dict[str, str]:
        """code -> device id for those of `codes` that name a device of the tenant."""
        now = time.monotonic()
        found: dict[str, str] = {}
        wanted: list[str] = []
        for code in dict.fromkeys(codes):
            if not CODE.match(code):
                continue  # not a device subject we could have issued; never into a filter
            key = (tenant_id, code)
            if key in self.ids:
                found[code] = self.ids[key]
            elif now - self.misses.get(key, -MISS_TTL) >= MISS_TTL:
                wanted.append(code)
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            generation = self.generation
            either = " || ".join(f'code = "{c}"' for c in chunk)
            rows = await self.pb.list("devices", filter=f'tenant = "{tenant_id}" && ({either})',
                                      fields="id,code")
            by_code = {str(r["code"]): str(r["id"]) for r in rows}
            for code in chunk:
                if code in by_code:
                    found[code] = by_code[code]
                    if generation == self.generation:  # no create/delete event meanwhile
                        self.ids[(tenant_id, code)] = by_code[code]
                        self.keys[by_code[code]] = (tenant_id, code)
                else:
                    self._missed((tenant_id, code))
        return found

    def _missed(self, key: tuple[str, str]) -> None:
        self.misses[key] = time.monotonic()
        if len(self.misses) > MAX_MISSES:
            for old in list(self.misses)[: len(self.misses) - MAX_MISSES]:
                del self.misses[old]
