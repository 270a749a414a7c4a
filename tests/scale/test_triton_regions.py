"""The shared-memory regions of ``--backend triton ?shm=system`` against a scripted client: a region the
server still holds right after an answer ('currently in use') is unregistered once it lets go; other
errors are not retried (CI once failed on the real server's brief hold when a region grew)."""

from __future__ import annotations

import pytest

from seg_edge.runtime.sessions import triton
from seg_edge.runtime.sessions.triton import Regions


class ServerError(Exception):
    pass


class Client:
    def __init__(self, busy: int, message: str = "Cannot unregister shared memory region, it is currently in use."):
        self.busy, self.message, self.calls = busy, message, []

    def register_system_shared_memory(self, name, key, nbytes, client_timeout):
        self.calls.append(("register", name, nbytes))

    def unregister_system_shared_memory(self, name, client_timeout):
        self.calls.append(("unregister", name))
        if self.busy:
            self.busy -= 1
            raise ServerError(self.message)


class Shm:
    def __init__(self):
        self.live: set[str] = set()

    def create_shared_memory_region(self, name, key, nbytes):
        self.live.add(name)
        return name

    def destroy_shared_memory_region(self, handle):
        self.live.remove(handle)


def test_a_region_still_in_use_is_unregistered_once_the_server_lets_go():
    client, shm = Client(busy=3), Shm()
    regions = Regions(client, shm, "t", ServerError)
    regions.ensure("in", 8)
    regions.ensure("in", 16)  # grows: unregister is refused three times, then done
    assert [c[0] for c in client.calls].count("unregister") == 4
    assert regions.sizes == {"in": 16} and shm.live == {"t-in"}
    regions.close()
    assert not shm.live


def test_other_errors_and_a_region_held_too_long_are_raised(monkeypatch):
    regions = Regions(Client(busy=1, message="unknown region"), Shm(), "t", ServerError)
    regions.ensure("out", 8)
    with pytest.raises(ServerError, match="unknown region"):
        regions.ensure("out", 16)
    monkeypatch.setattr(triton, "RELEASE_WAIT_S", 0.05)
    client, shm = Client(busy=10**6), Shm()
    regions = Regions(client, shm, "t", ServerError)
    regions.ensure("in", 8)
    with pytest.raises(ServerError, match="in use"):
        regions.ensure("in", 16)
    regions.close()  # the server may be gone: the local region is still removed
    assert not shm.live
