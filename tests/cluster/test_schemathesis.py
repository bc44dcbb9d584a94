"""Property-based API test: schemathesis against a live 3-node cluster's own OpenAPI document.

The document is fetched from the leader (so writes are answered, not redirected)
and every operation is called with generated requests: positive ones (valid per
the document), negative ones (invalid on purpose), and positive ones aimed at
existing queues, exchanges and streams so the success paths run too. Every
answer must not be a 5xx and must match the document: status, body schema,
required headers (Retry-After on 503, Location on 307), content type.

Bounded: a fixed number of derandomized examples per operation, no shrinking,
and long-poll waits capped, so the run takes well under 90 s on 2 cores.
"""

import copy
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import request

Case = schemathesis.Case[Any]
Operation = schemathesis.APIOperation[Any, Any, Any, Any]
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    response_headers_conformance,
    content_type_conformance,
]
EXAMPLES = {
    schemathesis.GenerationMode.POSITIVE: 20,
    schemathesis.GenerationMode.NEGATIVE: 20,
}
EXISTING_EXAMPLES = 20
FOLLOWER_EXAMPLES = 5
# Long polls would make each example last up to 20 s; the bound is still tested (0..cap).
WAIT_CAP_S = 0.2
# Fuzzing these would reconfigure the cluster under test (add phantom members, remove live ones);
# tests/cluster/test_membership.py covers them.
# Creating the first (admin) user would turn authentication on and make the rest of the run
# answer 401; tests/unit/test_auth.py covers it.
EXCLUDED = {
    ("POST", "/v1/cluster/members"),
    ("DELETE", "/v1/cluster/members/{member}"),
    ("POST", "/v1/users"),
}
# Resources that exist during the "existing" runs (path parameter -> name).
EXISTING = {
    "queue": "st-q",
    "exchange": "st-x",
    "stream": "st-s",
    "group": "st-g",
    "user": "st-u",  # never created (no user may exist here): its operations answer 404
}


def _fuzzable(document: dict[str, Any]) -> dict[str, Any]:
    """The served document with long-poll waits capped and the excluded operations left out."""
    doc = copy.deepcopy(document)
    for method, path in EXCLUDED:
        del doc["paths"][path][method.lower()]
        if not doc["paths"][path]:
            del doc["paths"][path]
    wait = doc["components"]["schemas"]["ReceiveIn"]["properties"]["wait"]["anyOf"][0]
    wait["maximum"] = WAIT_CAP_S
    for param in doc["paths"]["/v1/streams/{stream}/records"]["get"]["parameters"]:
        if param["name"] == "wait":
            param["schema"]["maximum"] = WAIT_CAP_S
    return doc


def _seed(base: str) -> None:
    """(Re)create what the "existing" runs aim at (a fuzzed declare may have changed it)."""
    calls: list[tuple[str, str, Any]] = [
        ("PUT", f"/v1/queues/{EXISTING['queue']}", {}),
        ("POST", f"/v1/queues/{EXISTING['queue']}/messages", {"messages": [{"body": "seed"}]}),
        ("PUT", f"/v1/exchanges/{EXISTING['exchange']}", {"type": "topic"}),
        ("PUT", f"/v1/exchanges/{EXISTING['exchange']}/bindings/{EXISTING['queue']}", {}),
        ("PUT", f"/v1/streams/{EXISTING['stream']}", {}),
        ("POST", f"/v1/streams/{EXISTING['stream']}/records", {"records": [{"body": "seed"}]}),
    ]
    for method, path, body in calls:
        resp = request(method, base + path, body)
        assert resp.status in (200, 201, 409), (method, path, resp.status, resp.body)


def _run(
    strategy: Any,
    examples: int,
    call: Callable[[Case], None],
) -> None:
    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        # No shrinking: a failure is reported with its request as found, within the time bound.
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        # Generated request data is slow to build and often filtered: neither is a defect here.
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: Case) -> None:
        call(case)

    run()


def _plan(operation: Operation, spec: dict[str, Any]) -> list[tuple[str, Any, int]]:
    """(label, strategy, examples) runs for one operation against the leader."""
    # An operation without parameters or body has no input to get wrong.
    takes_input = "parameters" in spec or "requestBody" in spec
    runs: list[tuple[str, Any, int]] = [
        (str(mode), operation.as_strategy(generation_mode=mode), count)
        for mode, count in EXAMPLES.items()
        if mode is schemathesis.GenerationMode.POSITIVE or takes_input
    ]
    names = {p.strip("{}") for p in operation.path.split("/") if p.startswith("{")}
    if operation.method.upper() != "DELETE" and names:
        fixed = {name: EXISTING[name] for name in names}
        runs.append(("existing", operation.as_strategy(path_parameters=fixed), EXISTING_EXAMPLES))
    return runs


def _describe(exc: BaseException) -> str:
    notes = "\n".join(getattr(exc, "__notes__", []))  # schemathesis adds the curl command
    return f"{exc}\n{notes}"


def test_api_matches_its_openapi_document(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster().start()
    leader = cluster.wait_leader()
    follower = cluster.follower()
    served = request("GET", leader.url + "/v1/openapi.json")
    assert served.status == 200
    document = _fuzzable(served.body)
    schema = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    statuses: Counter[int] = Counter()

    def caller(base_url: str) -> Callable[[Case], None]:
        def call(case: Case) -> None:
            # Redirects are answers to check, not to follow.
            response = case.call(
                base_url=base_url, session=session, allow_redirects=False, timeout=30
            )
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

        return call

    on_leader, on_follower = caller(leader.url), caller(follower.url)
    started = time.monotonic()
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the served document is invalid: {result.err()}"
        operation = result.ok()
        operations += 1
        spec = document["paths"][operation.path][operation.method.lower()]
        runs = [
            (label, strategy, count, on_leader) for label, strategy, count in _plan(operation, spec)
        ]
        # A follower answers reads itself and redirects writes (307 with Location).
        runs.append(("follower", operation.as_strategy(), FOLLOWER_EXAMPLES, on_follower))
        for label, strategy, count, call in runs:
            if label == "existing":
                _seed(cluster.wait_leader().url)
            try:
                _run(strategy, count, call)
            # schemathesis reports its check failures as a BaseExceptionGroup.
            except (Exception, BaseExceptionGroup) as exc:
                where = f"{operation.method.upper()} {operation.path} ({label})"
                failures.append(f"{where}: {_describe(exc)}")
    elapsed = time.monotonic() - started
    session.close()
    sys.stderr.write(f"schemathesis: {operations} operations, {elapsed:.1f} s, {dict(statuses)}\n")
    assert operations >= 30, "the document lost operations"
    # The generated requests reached the success paths and the redirects, not only refusals.
    assert sum(n for status, n in statuses.items() if status < 300) > 100
    assert statuses[307] > 0
    assert not failures, "\n\n".join(failures)
