"""Session routing across replicas: a consistent-hash router whose ring survives a replica restart, and the replica id
on every HTTP answer (`x-drivetune-replica`), which shows which replica served a call.

Ray Serve's `ConsistentHashRouter` places a replica on the ring by its unique id. A restarted replica gets a new id,
so its new ring positions take sessions from the surviving replicas too (with 2 replicas, about half of the
survivor's sessions), and those sessions answer "not held". `SlotHashRouter` places ring *slots* instead: a router
gives each replica the lowest free slot (new replicas sorted by id), and a replacement takes the slot its predecessor
left. The surviving replicas keep their positions, so only the dead replica's sessions move (to its replacement, which
answers that they were lost). Slots live in each router (the HTTP proxy's, each handle's): a router created after a
restart assigns slots afresh, which is the stock router's behaviour.
"""

from __future__ import annotations

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter, _hash_bytes

ROUTER = "services.routing.SlotHashRouter"
REPLICA_HEADER = "x-drivetune-replica"


class SlotHashRouter(ConsistentHashRouter):
    """ConsistentHashRouter with ring positions hashed from stable slots (a replacement inherits its slot)."""

    def _rebuild_ring(self, new_snapshot) -> None:
        slots: list = list(getattr(self, "_slots", []))
        slots = [r if r in new_snapshot else None for r in slots]
        for replica in sorted(new_snapshot - set(slots), key=lambda r: r.unique_id):
            free = slots.index(None) if None in slots else len(slots)
            slots[free:free + 1] = [replica]
        self._slots = slots
        ring = sorted((_hash_bytes(f"slot{k}:{i}".encode()), r) for k, r in enumerate(slots) if r is not None
                      for i in range(self._num_virtual_nodes))
        self._ring_hashes = [h for h, _ in ring]
        self._ring_replicas = [r for _, r in ring]
        self._replica_set_snapshot = new_snapshot


class ReplicaHeader:
    """ASGI middleware: every HTTP answer names the replica that produced it."""

    def __init__(self, app) -> None:
        self.app = app
        self.value = b""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self.value:
            from ray import serve

            self.value = serve.get_replica_context().replica_id.to_full_id_str().encode()

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.value)]}
            await send(message)

        await self.app(scope, receive, tagged)
