"""Faults on a seeded schedule: kill, pause, partition, membership, restart-all.

``plan()`` turns (seed, nemeses, duration, node count) into a list of fault
windows with ``random.Random(seed)``, before anything runs: the same seed
gives the same sequence of fault types, start times, durations, targeting
choices (the leader or a node picked by index) and partition shapes. Who the
leader *is* at that moment depends on timing, so a rerun repeats the schedule
but not necessarily the exact victim. Every window is recorded in the history
as a ``nemesis`` ``start`` and ``stop`` record, and every window ends with a
heal before the next one starts (one fault at a time keeps each unavailability
attributable to one cause).

The membership nemesis removes a node (the leader or a random one) through the
HTTP API, as an operator scaling in would, waits for it to stop itself and
wipes its data dir; its heal starts the node again with an empty data dir and
``--join``, as README's "Replacing a dead node" says, and waits until it is a
caught-up member. ``removal`` and ``rejoin`` records say what each step came
to: a removal refused with ``409`` (another change running, or it would lose
the quorum) or not answered in time ends the window with nothing else done.

The nemesis also watches for nodes that exit on their own: each such exit is a
``node_exit`` record (with the log tail) and the node is restarted, at most
``MAX_CRASH_RESTARTS`` times, so one crash does not end the run. A node that
stops because it was removed is not such an exit.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.cluster import ChaosCluster
from chaos.history import HistoryWriter
from node.membership import was_removed

__all__ = [
    "KINDS",
    "Fault",
    "Nemesis",
    "membership_summary",
    "partition_pairs",
    "plan",
]

log = logging.getLogger(__name__)

KINDS = ("kill", "pause", "partition", "membership", "restart-all")
PARTITION_SHAPES = ("isolate-leader", "split", "bridge")

# Seconds: quiet time before the first fault, between faults and before the end.
FIRST_FAULT_AT = 3.0
QUIET_BETWEEN = (2.0, 6.0)
QUIET_AT_END = 4.0
DURATIONS: dict[str, tuple[float, float]] = {
    "kill": (3.0, 8.0),
    "pause": (3.0, 8.0),
    "partition": (4.0, 10.0),
    "restart-all": (1.0, 4.0),
    # Time out of the cluster, from the removal to the re-join.
    "membership": (4.0, 10.0),
}
LEADER_PROBABILITY = {"kill": 0.5, "pause": 0.4, "membership": 0.4}
MAX_CRASH_RESTARTS = 3
POLL_S = 0.25
# Membership steps, each bounded (seconds): the removal request with its redirects
# and retries, the removed node stopping itself (it finishes its in-flight requests,
# up to 5 s), and the re-joined node becoming a caught-up member.
REMOVAL_DEADLINE_S = 30.0
REMOVED_EXIT_WAIT_S = 20.0
REJOIN_WAIT_S = 60.0
# Nemesis.stop waits this long for the thread, so a membership window it
# interrupts can still finish its bounded steps and heal.
STOP_WAIT_S = REMOVAL_DEADLINE_S + REMOVED_EXIT_WAIT_S + REJOIN_WAIT_S + 30.0


@dataclass(frozen=True)
class Fault:
    """One planned fault window; ``start`` is seconds after the workload starts."""

    number: int
    kind: str
    start: float
    duration: float
    # kill/pause/membership: "leader" | "random"; partition: a shape; restart-all: "all"
    target: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.number,
            "fault": self.kind,
            "start": round(self.start, 3),
            "duration": round(self.duration, 3),
            "target": self.target,
        }


def plan(seed: int, kinds: Sequence[str], duration: float, nodes: int) -> list[Fault]:
    """The whole schedule for one run, from the seed alone."""
    usable = [k for k in kinds if k in KINDS]
    if not usable:
        return []
    rng = random.Random(seed)
    faults: list[Fault] = []
    t = FIRST_FAULT_AT
    bag: list[str] = []
    while True:
        # Kinds are drawn from a reshuffled bag, so every requested nemesis shows up
        # once before any repeats: a short run still exercises all of them.
        if not bag:
            bag = sorted(usable)
            rng.shuffle(bag)
        kind = bag.pop()
        low, high = DURATIONS[kind]
        length = rng.uniform(low, high)
        if kind in LEADER_PROBABILITY:
            target = "leader" if rng.random() < LEADER_PROBABILITY[kind] else "random"
        elif kind == "partition":
            target = rng.choice(PARTITION_SHAPES)
        else:
            target = "all"
        if t + length > duration - QUIET_AT_END:
            break
        faults.append(Fault(len(faults) + 1, kind, t, length, target))
        t += length + rng.uniform(*QUIET_BETWEEN)
    return faults


def membership_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Removals by outcome and re-joins, from the history's ``removal``/``rejoin`` records."""
    removals: dict[str, int] = {}
    rejoins = failed = 0
    for r in records:
        if r.get("type") != "nemesis":
            continue
        if r.get("phase") == "removal":
            outcome = str(r.get("outcome"))
            removals[outcome] = removals.get(outcome, 0) + 1
        elif r.get("phase") == "rejoin":
            if r.get("member"):
                rejoins += 1
            else:
                failed += 1
    return {"removals": removals, "rejoins": rejoins, "rejoins_failed": failed}


def partition_pairs(
    shape: str, ids: Sequence[str], leader: str | None, rng: random.Random
) -> tuple[list[tuple[str, str]], str]:
    """Node pairs to cut for a partition shape, and a description of the sides.

    * ``isolate-leader``: the leader (or a random node if none is known) alone;
    * ``split``: a random minority against the majority;
    * ``bridge``: two halves that cannot talk, plus one node that talks to both.
    """
    order = list(ids)
    rng.shuffle(order)
    if shape == "isolate-leader":
        alone = leader if leader in order else order[0]
        rest = [i for i in ids if i != alone]
        who = "leader" if alone == leader else "no leader known; random node"
        return [(alone, r) for r in rest], f"isolate {alone} ({who}) | {','.join(rest)}"
    if shape == "split":
        minority = sorted(order[: (len(order) - 1) // 2])
        majority = sorted(order[(len(order) - 1) // 2 :])
        pairs = [(a, b) for a in minority for b in majority]
        return pairs, f"split {','.join(minority)} | {','.join(majority)}"
    if shape == "bridge":
        bridge, rest = order[0], order[1:]
        half = len(rest) // 2
        side_a, side_b = sorted(rest[:half]), sorted(rest[half:])
        pairs = [(a, b) for a in side_a for b in side_b]
        return pairs, f"bridge {bridge} sees {','.join(side_a)} | {','.join(side_b)}"
    raise ValueError(f"unknown partition shape {shape!r}")


def _nothing() -> None:
    """The heal of a fault that could not be applied."""


class Nemesis:
    """Runs a plan against a cluster on its own thread; always leaves the cluster healed."""

    def __init__(
        self,
        cluster: ChaosCluster,
        history: HistoryWriter,
        faults: Sequence[Fault],
        seed: int,
        origin: float,
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.faults = list(faults)
        self.seed = seed
        self.origin = origin  # history time the fault offsets count from
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-nemesis", daemon=True)
        self._crash_restarts: dict[str, int] = {}
        self._partitioned = False
        # Nodes whose removal was asked for and not settled yet (members again, or
        # found still members): the window, and whether the removal was answered
        # 200. The lock keeps the final heal from racing a window it interrupted.
        self._leaving: dict[str, tuple[int, bool]] = {}
        self._membership_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Ends the current window early (healing it) and waits for the thread."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the nemesis thread did not stop within %.0f s", timeout)

    # --------------------------------------------------------------- the loop

    def _wait_until(self, t: float) -> bool:
        """Sleeps until history time ``t`` while watching for crashes; False when stopped."""
        while True:
            self.watch_exits()
            remaining = t - self.history.now()
            if remaining <= 0:
                return True
            if self._stop.wait(min(POLL_S, remaining)):
                return False

    def _run(self) -> None:
        try:
            for fault in self.faults:
                if not self._wait_until(self.origin + fault.start):
                    return
                heal = self._begin(fault)
                self._wait_until(self.origin + fault.start + fault.duration)
                self._end(fault, heal)
            self._wait_until(float("inf"))
        except Exception as e:
            log.exception("nemesis failed")
            self.errors.append(f"nemesis crashed: {e!r}")

    def _begin(self, fault: Fault) -> Callable[[], None]:
        rng = random.Random(f"{self.seed}:{fault.number}")
        ids = self.cluster.ids
        targets: list[str] = []
        detail = fault.target
        heal: Callable[[], None] = _nothing
        try:
            leader = self.cluster.leader()
            if fault.kind in ("kill", "pause"):
                pick = rng.choice(ids)
                victim = leader if fault.target == "leader" and leader else pick
                if fault.target == "leader":
                    detail = "leader" if leader else "leader unknown; random node"
                elif victim == leader:
                    detail = "random (it was the leader)"
                targets = [victim]
                self._record_start(fault, targets, detail, leader=leader)
                if fault.kind == "kill":
                    self.cluster.kill(victim)
                    heal = functools.partial(self.cluster.start_node, victim)
                else:
                    self.cluster.pause(victim)
                    heal = functools.partial(self.cluster.resume, victim)
            elif fault.kind == "membership":
                pick = rng.choice(ids)
                victim = leader if fault.target == "leader" and leader else pick
                if fault.target == "leader":
                    detail = "remove the leader" if leader else "remove a random node (no leader)"
                else:
                    detail = "remove a random node" + (" (the leader)" if victim == leader else "")
                targets = [victim]
                self._record_start(fault, targets, detail, leader=leader)
                via = [i for i in self.cluster.responsive() if i != victim] or [victim]
                # Set first: whatever the removal does, the heal brings the node back.
                heal = functools.partial(self._restore_member, victim)
                self._remove(fault, victim, self.cluster.spec(rng.choice(via)).url)
            elif fault.kind == "partition":
                pairs, detail = partition_pairs(fault.target, ids, leader, rng)
                targets = sorted({n for p in pairs for n in p})
                self._record_start(
                    fault, targets, detail, leader=leader, pairs=[list(p) for p in pairs]
                )
                self._partitioned = True
                self.cluster.cut(pairs)
                heal = self._heal_partition
            elif fault.kind == "restart-all":
                targets = list(ids)
                self._record_start(fault, targets, "SIGKILL every node at once", leader=leader)
                for node_id in ids:
                    self.cluster.kill(node_id)
                heal = self._start_all
            else:
                raise ValueError(f"cannot run nemesis {fault.kind!r}")
        except Exception as e:
            log.exception("fault %d (%s) failed", fault.number, fault.kind)
            self._record_error(fault.number, fault.kind, f"window {fault.number}", e)
        log.info("window %d: %s %s %s", fault.number, fault.kind, detail, ",".join(targets))
        return heal

    def _record_start(self, fault: Fault, targets: list[str], detail: str, **extra: Any) -> None:
        self.history.write(
            {
                "type": "nemesis",
                "phase": "start",
                "window": fault.number,
                "fault": fault.kind,
                "targets": targets,
                "detail": detail,
                **extra,
            }
        )

    def _record_error(self, window: int, kind: str, what: str, e: Exception) -> None:
        """A fault that could not be applied or healed: an ``error`` record fails the run."""
        self.errors.append(f"{what} ({kind}): {e}")
        self.history.write(
            {
                "type": "nemesis",
                "phase": "error",
                "window": window,
                "fault": kind,
                "error": str(e)[:500],
            }
        )

    def _end(self, fault: Fault, heal: Callable[[], None]) -> None:
        try:
            heal()
        except Exception as e:
            log.exception("healing window %d failed", fault.number)
            if fault.kind == "membership":
                # A node that does not come back is a finding about the product.
                self._record_error(fault.number, fault.kind, f"heal of window {fault.number}", e)
            else:
                self.errors.append(f"heal of window {fault.number} ({fault.kind}): {e}")
        self.history.write(
            {"type": "nemesis", "phase": "stop", "window": fault.number, "fault": fault.kind}
        )
        log.info("window %d healed", fault.number)

    def _heal_partition(self) -> None:
        self.cluster.heal()
        self._partitioned = False

    def _start_all(self) -> None:
        for node_id in self.cluster.ids:
            self.cluster.start_node(node_id)

    # ------------------------------------------------------------ membership

    def _remove(self, fault: Fault, victim: str, via: str) -> None:
        """Asks ``via`` to remove ``victim``; once removed, waits for it to stop and wipes it.

        A refusal (409) is recorded and changes nothing else. Without an answer
        in time the removal may still complete: the heal finds out.
        """
        was_running = self.cluster.running(victim)
        with self._membership_lock:
            self._leaving[victim] = (fault.number, False)
            self.cluster.expect_removal(victim)
        removal = self.cluster.remove_member(victim, via, REMOVAL_DEADLINE_S)
        record: dict[str, Any] = {
            "type": "nemesis",
            "phase": "removal",
            "window": fault.number,
            "fault": fault.kind,
            "node": victim,
            **removal.to_dict(),
        }
        log.info("window %d: removal of %s: %s", fault.number, victim, removal)
        if removal.outcome != "removed":
            self.history.write(record)
            if removal.outcome == "refused":
                with self._membership_lock:
                    self._leaving.pop(victim, None)
                    self.cluster.expect_removal(victim, leaving=False)
            elif removal.outcome == "failed":
                raise RuntimeError(
                    f"removing {victim} failed: {removal.status} {removal.code} {removal.error}"
                )
            return
        with self._membership_lock:
            self._leaving[victim] = (fault.number, True)
        # README: a node removed while running applies its removal and stops itself.
        code = self.cluster.wait_exit(victim, REMOVED_EXIT_WAIT_S)
        record["returncode"] = code
        self.history.write(record)
        if code is None:
            self.cluster.kill(victim)
            raise RuntimeError(
                f"{victim} was removed but still ran {REMOVED_EXIT_WAIT_S:.0f} s later "
                "(killed; its heal re-joins it)"
            )
        if code != 0 and was_running:
            log.error("removed node %s exited with code %d", victim, code)
            self._record_exit(victim, code, self.cluster.log_tail(victim))
        # Only a node out of the configuration may lose its data: a member that
        # forgets entries it acknowledged can make committed writes disappear.
        self.cluster.wipe(victim)

    def _restore_member(self, node_id: str) -> None:
        """The heal of a membership window: ``node_id`` ends a running member.

        A removed node starts again from an empty data dir with ``--join`` (the
        same id and addresses) and is waited for until it is a caught-up member.
        A node whose removal did not happen stays as it is (with its data).
        """
        with self._membership_lock:
            leaving = self._leaving.pop(node_id, None)
            if leaving is None:
                return
            window, removed = leaving
            if not removed and not self._removed_after_all(window, node_id):
                log.info("%s is still a member; nothing to re-join", node_id)
                self.cluster.expect_removal(node_id, leaving=False)
                self.watch_exits()  # if it died meanwhile, that was a crash
                return
            join = self.cluster.rejoin(node_id)
            start = time.monotonic()
            member = self._wait_member(node_id)
            self.history.write(
                {
                    "type": "nemesis",
                    "phase": "rejoin",
                    "window": window,
                    "fault": "membership",
                    "node": node_id,
                    "join": join,
                    "member": member,
                    "waited_s": round(time.monotonic() - start, 3),
                }
            )
            if not member:
                raise RuntimeError(
                    f"{node_id} was not a caught-up member {REJOIN_WAIT_S:.0f} s after "
                    f"starting with --join {join}"
                )
            log.info("%s is a member again (joined through %s)", node_id, join)

    def _removed_after_all(self, window: int, node_id: str) -> bool:
        """Whether a removal that got no answer took effect.

        A stopped node says so itself (it marks its data dir when it applies its
        removal); a running one is removed when the leader no longer lists it,
        and then it is stopping.
        """
        if not self.cluster.running(node_id):
            return was_removed(str(self.cluster.spec(node_id).data_dir))
        if self.cluster.in_configuration(node_id) is not False:
            return False
        if self.cluster.wait_exit(node_id, REMOVED_EXIT_WAIT_S) is None:
            self.cluster.kill(node_id)
            self._record_error(
                window,
                "membership",
                f"removal of {node_id}",
                RuntimeError(f"{node_id} left the configuration but did not stop; killed"),
            )
        return True

    def _wait_member(self, node_id: str) -> bool:
        """Polls until the leader lists ``node_id`` as connected and it is ready (bounded)."""
        deadline = time.monotonic() + REJOIN_WAIT_S
        while time.monotonic() < deadline:
            self.watch_exits()  # a joining node that crashes is a finding, and restarted
            if self.cluster.is_member(node_id):
                return True
            time.sleep(POLL_S)
        return False

    # ------------------------------------------------------------ watch, heal

    def _record_exit(self, node_id: str, returncode: int, log_tail: str) -> None:
        self.history.write(
            {
                "type": "node_exit",
                "node": node_id,
                "returncode": returncode,
                "log_tail": log_tail[-4000:],
            }
        )

    def watch_exits(self) -> None:
        """Records nodes that died on their own and restarts them (a bounded number of times)."""
        for ex in self.cluster.unexpected_exits():
            log.error("node %s exited by itself with code %d", ex.node, ex.returncode)
            self._record_exit(ex.node, ex.returncode, ex.log_tail)
            count = self._crash_restarts.get(ex.node, 0)
            if count < MAX_CRASH_RESTARTS:
                self._crash_restarts[ex.node] = count + 1
                self.cluster.start_node(ex.node)

    def heal_all(self) -> None:
        """The final heal: no partition, nothing paused, every node running and a member."""
        if self.cluster.topology.supports_partition:
            self.cluster.heal()
        for node_id in self.cluster.ids:
            self.cluster.resume(node_id)
        self.watch_exits()
        for node_id, (window, _) in list(self._leaving.items()):
            try:
                self._restore_member(node_id)
            except Exception as e:
                log.exception("the final heal could not bring %s back", node_id)
                self._record_error(window, "membership", f"final heal of {node_id}", e)
        for node_id in self.cluster.ids:
            if not self.cluster.running(node_id):
                self.cluster.start_node(node_id)
        self.history.write({"type": "phase", "name": "final_heal"})
