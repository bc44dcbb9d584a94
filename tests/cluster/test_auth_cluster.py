"""Auth on a real 3-node cluster: first admin from the CLI; follower redirects keep the token."""

import pytest

from raftmq import Client
from raftmq.cli import main
from raftmq.errors import Forbidden, Unauthorized
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import request, wait_for


def test_first_admin_then_tokens_through_a_follower(
    make_cluster: ClusterFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = make_cluster().start()
    follower = cluster.follower()
    # Unauthenticated while no user exists; sent to a follower, so it follows the 307.
    assert main(["ctl", "--url", follower.url, "user", "add", "admin", "--admin"]) == 0
    out = capsys.readouterr().out
    token = out.split("token (shown only now): ")[1].strip()
    # The follower turns authentication on once it has applied the user (right after the leader).
    wait_for(lambda: request("GET", follower.url + "/v1/queues").status == 401, 10, "auth on")
    assert request("GET", follower.url + "/healthz").status == 200

    # Only the follower's URL: every write is redirected to the leader with the header re-sent.
    with Client([follower.url], token=token) as admin:
        admin.declare_queue("orders")
        admin.declare_queue("secret")
        alice = admin.add_user("alice")
        admin.grant("alice", write="orders", read="")
        assert {u["name"] for u in admin.users()} == {"admin", "alice"}
    with Client([follower.url], token=alice["token"]) as client:
        [message_id] = client.publish_batch("orders", [{"body": "hi"}])
        with pytest.raises(Forbidden):
            client.publish("secret", "no")
        with pytest.raises(Forbidden):
            client.receive("orders")
    with Client([follower.url], retry_deadline=1.0) as anonymous, pytest.raises(Unauthorized):
        anonymous.publish("orders", "no")
    with Client([follower.url], token=token) as admin:
        got = admin.receive("orders", max=10)
        assert [m.id for m in got] == [message_id]
    # ctl with --token.
    ctl_args = ["ctl", "--url", follower.url, "--token", token, "user", "list", "--json"]
    assert main(ctl_args) == 0
    assert "alice" in capsys.readouterr().out
