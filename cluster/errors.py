"""Errors the cluster layer raises to its callers; node/ maps each to an HTTP answer."""


class ClusterError(Exception):
    """Base of every error raised by cluster/."""


class NoLeader(ClusterError):
    """No leader is known: an election is running or this node is cut off. Safe to retry."""


class NotLeader(ClusterError):
    """This node is not the leader; `leader_raft` names the one it believes leads, if any."""

    def __init__(self, leader_raft: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_raft or 'unknown'})")
        self.leader_raft = leader_raft


class UnknownOutcome(ClusterError):
    """The proposal may or may not have been committed (deadline, leader change, lost callback)."""


class Overloaded(ClusterError):
    """Too many proposals are waiting; the caller should back off and retry."""


class StorageFull(ClusterError):
    """This node's store or disk is nearly full: writes that add data are refused."""


class MembershipRefused(ClusterError):
    """A membership change that is unsafe now or conflicts with one in progress."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
