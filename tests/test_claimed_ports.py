"""Ports the tests hand to a server in another process (``plant dev``'s API and Flower, a Redis
they restart on its port): nothing else may take one between its pick and the server's bind.

With ``free_port`` (bind to 0, close) CI saw Flower's port taken in that window ("Address already
in use"): the kernel hands the number to the next bind to 0 or outgoing connection of any
process, the other xdist workers' included. :func:`cli.ports.claim_port` is the fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from cli import ports
from cli.ports import claim_port, ephemeral_range
from tests.conftest import REPO_ROOT

PICKER = """
import json, sys
from cli import ports
from cli.ports import claim_port
ports._pool.extend(ports.claimable_ports())  # both start at its first port: only the claims keep them apart
picked = [claim_port() for _ in range(int(sys.argv[1]))]
print(json.dumps(picked), flush=True)
sys.stdin.read()  # holds its claims until the test is done with both pickers
"""
PICKS = 600  # two pickers of bind-to-0 ports this many shared 23 to 32 of them, and each repeated 10 to 15 of its own


def test_a_claimed_port_is_never_one_the_kernel_hands_out_itself() -> None:
    """The kernel picks a bind to 0's port and an outgoing connection's from its ephemeral range
    only: a claimed port is none of them, so no other worker's server start or client connection
    can take it before its server binds it."""
    low, high = ephemeral_range()
    claimed = [claim_port() for _ in range(50)]
    assert [port for port in claimed if low <= port <= high] == []
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as client:
        assert low <= server.getsockname()[1] <= high and low <= client.getsockname()[1] <= high  # the range read is the kernel's


def test_pickers_in_two_xdist_workers_never_get_the_same_port() -> None:
    pickers = [
        subprocess.Popen([sys.executable, "-c", PICKER, str(PICKS)], cwd=REPO_ROOT, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env={**os.environ, "PYTEST_XDIST_WORKER": worker})
        for worker in ("gw0", "gw1")
    ]
    try:
        first, second = (json.loads(picker.stdout.readline()) for picker in pickers)
    finally:
        for picker in pickers:
            picker.communicate(timeout=30)
    assert len(set(first)) == len(set(second)) == PICKS  # nor one process the same port twice
    assert set(first) & set(second) == set()


def test_a_port_in_use_is_not_claimed(monkeypatch) -> None:
    """A server that is no claimer's (another program's, a test's still running) keeps its port."""
    from cli import ports

    rest = ports.claimable_ports()
    with socket.create_server(("127.0.0.1", claim_port())) as busy:
        taken = busy.getsockname()[1]
        with socket.socket() as held:  # bound, not listening: in use all the same
            held.bind(("127.0.0.1", claim_port()))
            first = [taken, held.getsockname()[1]]
            monkeypatch.setattr(ports, "_pool", [*first, *rest])  # looked at first
            monkeypatch.setattr(ports, "_next", 0)
            monkeypatch.setattr(ports, "_claimed", set())  # as if another process had claimed neither
            port = claim_port()
        assert port not in first


@pytest.mark.parametrize("made_first", ["a link", "another user's file", "a directory"])
def test_a_claims_file_another_user_could_have_made_first_is_refused(tmp_path, made_first) -> None:
    """The claims file lives in a directory anyone may write to: one made there first by another
    user (its every byte locked: no port left) or a link to elsewhere is not taken for ours."""
    path = tmp_path / "plant-port-claims"
    if made_first == "a link":
        path.symlink_to(tmp_path / "elsewhere")
    elif made_first == "a directory":
        path.mkdir()
    else:
        if os.getuid() != 0:
            pytest.skip("giving a file to another user needs root")
        path.write_bytes(b"")
        os.chown(path, 65534, 65534)
    with pytest.raises(ports.NoPortLeft, match="not a regular file of this user's"):
        ports._own_claims_file(path)
    assert not (tmp_path / "elsewhere").exists()
