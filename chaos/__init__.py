"""Chaos testing for raftmq: a real cluster under faults, a recorded history, a checker.

Entry point: ``raftmq chaos run`` (``chaos.run.main``). See ``chaos/DESIGN.md``.
"""
