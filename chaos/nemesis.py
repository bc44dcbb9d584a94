"""Faults on a seeded schedule: kill, pause, partition, restart-all.

``plan()`` turns (seed, nemeses, duration, node count) into a list of fault
windows with ``random.Random(seed)``, before anything runs: the same seed
gives the same sequence of fault types, start times, durations, targeting
choices (the leader or a node picked by index) and partition shapes. Who the
leader *is* at that moment depends on timing, so a rerun repeats the schedule
but not necessarily the exact victim. Every window is recorded in the history
as a ``nemesis`` ``start`` and ``stop`` record, and every window ends with a
heal before the next one starts (one fault at a time keeps each unavailability
attributable to one cause).

The nemesis also watches for nodes that exit on their own: each such exit is a
``node_exit`` record (with the log tail) and the node is restarted, at most
``MAX_CRASH_RESTARTS`` times, so one crash does not end the run.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.cluster import ChaosCluster
from chaos.history import HistoryWriter

__all__ = [
    "KINDS",
    "MEMBERSHIP_REFUSAL",
    "Fault",
    "Nemesis",
    "partition_pairs",
    "plan",
]

log = logging.getLogger(__name__)

KINDS = ("kill", "pause", "partition", "membership", "restart-all")
RUNNABLE = frozenset({"kill", "pause", "partition", "restart-all"})
MEMBERSHIP_REFUSAL = (
    "the membership nemesis needs dynamic membership "
    "(issue 'Operations: scale nodes in and out'), not available yet"
)
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
}
LEADER_PROBABILITY = {"kill": 0.5, "pause": 0.4}
MAX_CRASH_RESTARTS = 3
POLL_S = 0.25


@dataclass(frozen=True)
class Fault:
    """One planned fault window; ``start`` is seconds after the workload starts."""

    number: int
    kind: str
    start: float
    duration: float
    target: str  # kill/pause: "leader" | "random"; partition: a shape; restart-all: "all"

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
    usable = [k for k in kinds if k in RUNNABLE]
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

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
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
            self.errors.append(f"window {fault.number} ({fault.kind}): {e}")
            self.history.write(
                {
                    "type": "nemesis",
                    "phase": "error",
                    "window": fault.number,
                    "fault": fault.kind,
                    "error": str(e)[:500],
                }
            )
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

    def _end(self, fault: Fault, heal: Callable[[], None]) -> None:
        try:
            heal()
        except Exception as e:
            log.exception("healing window %d failed", fault.number)
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

    # ------------------------------------------------------------ watch, heal

    def watch_exits(self) -> None:
        """Records nodes that died on their own and restarts them (a bounded number of times)."""
        for ex in self.cluster.unexpected_exits():
            log.error("node %s exited by itself with code %d", ex.node, ex.returncode)
            self.history.write(
                {
                    "type": "node_exit",
                    "node": ex.node,
                    "returncode": ex.returncode,
                    "log_tail": ex.log_tail[-4000:],
                }
            )
            count = self._crash_restarts.get(ex.node, 0)
            if count < MAX_CRASH_RESTARTS:
                self._crash_restarts[ex.node] = count + 1
                self.cluster.start_node(ex.node)

    def heal_all(self) -> None:
        """The final heal: no partition, nothing paused, every node running."""
        if self.cluster.topology.supports_partition:
            self.cluster.heal()
        for node_id in self.cluster.ids:
            self.cluster.resume(node_id)
        self.watch_exits()
        for node_id in self.cluster.ids:
            if not self.cluster.running(node_id):
                self.cluster.start_node(node_id)
        self.history.write({"type": "phase", "name": "final_heal"})
