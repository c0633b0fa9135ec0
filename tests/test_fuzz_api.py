"""Schemathesis against our own /openapi.json: every documented operation, fuzzed through a real
API process (uvicorn, in front of the real bridge with its simulator driver) on the real database,
once with a real user's token and once without one.

Every answer must be a documented status and never a 5xx, with the documented content type, and
its body must match the documented schema. /api/sync answers 200 with each replayed operation's
own status inside, so a 5xx there is checked too.

Random ids and phone numbers rarely hit anything, so for most examples the fuzz user's own rows
are swapped in: path ids (a fresh stock of rows per operation, so deletes in one operation leave
the next one something to work on), and, in schema-valid bodies only, id lists, phone numbers,
sync paths and the import file. Every third example keeps the fuzzer's values; in a
schema-violating (hostile) example only well-formed path ids are swapped, never the hostile part. Generation is deterministic and bounded,
so a run is repeatable and fits CI (`make test`).

A third run turns every check Schemathesis has on (seed 4242, 25 examples): undeclared methods answer
405 with an exact `Allow`, schema-violating values (a number for a date) are refused, and the rest.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import requests
import schemathesis
from api_processes import ApiProcess
from bridge_process import BridgeProcess
from hypothesis import settings as hypothesis_settings
from schemathesis.config import SchemathesisConfig
from schemathesis.transport.serialization import Binary

from whatsched.api.app import create_app
from whatsched.config import Settings

pytestmark = pytest.mark.slow

# Per operation, in the fuzzing phase (the examples and coverage phases add their own cases). A deeper
# local hunt: FUZZ_EXAMPLES=500 FUZZ_SEED=7 .venv/bin/pytest tests/test_fuzz_api.py
EXAMPLES_WITH_TOKEN = int(os.environ.get("FUZZ_EXAMPLES", "50"))
EXAMPLES_WITHOUT_TOKEN = max(1, EXAMPLES_WITH_TOKEN * 3 // 10)
SEED = os.environ.get("FUZZ_SEED")  # unset: derandomized, the same examples on every run
STOCK = 6  # rows of each kind the fuzz user owns, per operation
ID_KINDS = ("message_id", "group_id", "contact_id", "notification_id")
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")
# Message framing belongs to the HTTP server, not to the API: uvicorn answers a malformed one (say,
# `content-length: *[5q`) with 400 before any route runs. Hypothesis draws header names from the
# string constants of our own modules, so which of these it generates changes with the code.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})

# (test, operation) -> status -> answers; printed at the end as the run's coverage.
STATUSES: dict[tuple[str, str], Counter[int]] = defaultdict(Counter)


def fuzz_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            **({"seed": int(SEED)} if SEED else {}),
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
            "generation": {
                "mode": "all",  # schema-valid and hostile (schema-violating) inputs
                "max-examples": EXAMPLES_WITH_TOKEN,
                "deterministic": not SEED,
                "database": "none",
                "no-shrink": True,  # report a failure as found: shrinking would replay side effects
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "request-timeout": 60,
        }
    )


# The schema the code documents; test_the_api_serves_the_schema_that_is_fuzzed shows it is /openapi.json.
DOCUMENTED = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
schema = schemathesis.openapi.from_dict(DOCUMENTED, config=fuzz_config())
OPERATIONS = [result.ok().label for result in schema.get_all_operations()]


# ---------------------------------------------------------------------------------------------
# The server under test and what the fuzz user owns
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_api(settings: Settings, make_user: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """A real API process (its own pool, rate limits and error handling, as deployed) in front of
    the real bridge, so health is green and scheduling talks to a connected WhatsApp. make_user:
    the in-process app has written the signing key this process shares (DATA_DIR)."""
    bridge = BridgeProcess(tmp_path_factory.mktemp("fuzz-bridge"))
    bridge.start()
    env = {"BRIDGE_URL": bridge.url, "BRIDGE_TOKEN": bridge.token, "ALLOW_SIGNUP": "true"}
    api = ApiProcess(settings, env=env).start()
    try:
        api.wait_ready()
        yield api
    finally:
        api.stop()
        bridge.stop()


def base_url(api: ApiProcess) -> str:
    return f"http://127.0.0.1:{api.port}"


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


@dataclass
class Owned:
    """The fuzz user's token and, per operation, STOCK rows of each kind (row i of each kind belong
    together: group i holds contact i, message i targets group i)."""

    token: str
    rows: dict[str, dict[str, list[str]]]
    used: Counter[str] = field(default_factory=Counter)
    phones: Iterator[int] = field(default_factory=lambda: itertools.count(81000000))

    def adapt(self, case: schemathesis.Case, csv: bool = True) -> None:
        """csv=False keeps the generated import file: Schemathesis judges any edited body holding a
        file schema-violating, which the every-check run would then expect refused."""
        label = case.operation.label
        mine = self.rows[label]
        n = self.used[label]
        self.used[label] += 1
        if n % 3 == 2:
            return  # every third example keeps the fuzzer's own ids and values
        path = dict(case.path_parameters or {})
        kinds = [name for name in path if name in ID_KINDS]
        if kinds and all(_is_uuid(path[k]) for k in kinds):
            case.path_parameters = {**path, **{k: mine[k][n % STOCK] for k in kinds}}
        if _hostile(case):
            return  # hostile inputs stay exactly as generated
        if isinstance(case.body, dict):
            case.body = self._body(label, case.body, mine, n, csv)

    def _phone(self) -> str:
        return f"+569{next(self.phones)}"  # a Chilean mobile number: valid, and new each time

    def _body(self, label: str, body: dict[str, Any], mine: dict[str, list[str]], n: int, csv: bool) -> dict[str, Any]:
        body = dict(body)
        if isinstance(body.get("phone"), str):
            body["phone"] = self._phone()
        if isinstance(body.get("scheduled_for"), str):  # the API takes only the coming year
            body["scheduled_for"] = (datetime.now(UTC) + timedelta(days=1 + n % 300)).isoformat()
        for key, kind in (("group_ids", "group_id"), ("contact_ids", "contact_id")):
            if isinstance(body.get(key), list) and body[key]:
                body[key] = [mine[kind][(n + i) % STOCK] for i in range(min(len(body[key]), STOCK))]
        if label == "POST /api/contacts/import" and "file" in body and csv:
            body["file"] = self._csv()
        if label == "POST /api/sync" and isinstance(body.get("operations"), list):
            body["operations"] = [
                {**op, "path": self._sync_path(mine, n + i)} if isinstance(op, dict) else op
                for i, op in enumerate(body["operations"])
            ]
        return body

    def _csv(self) -> Binary:
        """Spanish headers, a new phone, a national number, a repeated one and a bad one."""
        first, second = self._phone(), self._phone()
        rows = [
            "nombre;teléfono;correo",
            f"Ana Pérez;{first};ana@example.com",
            f"Luis;{second[3:]};",  # national: 9 digits, read as Chilean (the profile's default country)
            f"Ana otra vez;{first};",
            "Nadie;12;no-es-correo",
        ]
        return Binary(("\n".join(rows) + "\n").encode())

    @staticmethod
    def _sync_path(mine: dict[str, list[str]], i: int) -> str:
        m, g, c, x = (mine[k][i % STOCK] for k in ("message_id", "group_id", "contact_id", "notification_id"))
        paths = (
            "/api/messages",
            f"/api/messages/{m}",
            f"/api/messages/{m}/schedule",
            f"/api/messages/{m}/cancel",
            "/api/contacts",
            f"/api/contacts/{c}",
            "/api/groups",
            f"/api/groups/{g}",
            f"/api/groups/{g}/contacts",
            f"/api/notifications/mark-read/{x}",
            f"/api/notifications/{x}",
        )
        return paths[i % len(paths)]


def _hostile(case: schemathesis.Case) -> bool:
    """Schema-violating anywhere: the case's mode, or one of its parts (the coverage phase marks a
    negative body in an otherwise positive case)."""
    meta = case.meta
    if meta is None or meta.generation.mode != schemathesis.GenerationMode.POSITIVE:
        return True
    return any(info.mode.is_negative for info in meta.components.values())


def _message_statuses(label: str) -> list[str]:
    """What each operation's messages start as: what its transition needs, or a mix."""
    for verb, status in (("schedule", "draft"), ("pause", "scheduled"), ("resume", "paused"), ("cancel", "scheduled")):
        if label.endswith("/" + verb):
            return [status] * STOCK
    return [("draft", "scheduled", "paused")[i % 3] for i in range(STOCK)]


async def _owned_rows(admin: asyncpg.Connection, owner: str, labels: list[str]) -> dict[str, list[str]]:
    """STOCK rows of each kind per operation, one set-based statement per table."""
    who = uuid.UUID(owner)
    count = STOCK * len(labels)
    statuses = [status for label in labels for status in _message_statuses(label)]
    contacts = await admin.fetch(
        """insert into public.contacts (created_by, name, phone)
           select $1, 'Fuzz ' || i, '+569' || (70000000 + i)::text from generate_series(1, $2) i
           returning id""",
        who,
        count,
    )
    groups = await admin.fetch(
        """insert into public.groups (created_by, name, description)
           select $1, 'fuzz group ' || i, 'stock' from generate_series(1, $2) i returning id""",
        who,
        count,
    )
    group_ids = [r["id"] for r in groups]
    contact_ids = [r["id"] for r in contacts]
    await admin.execute(
        """insert into public.group_contacts (group_id, contact_id, created_by)
           select g, c, $3 from unnest($1::uuid[], $2::uuid[]) as t(g, c)""",
        group_ids,
        contact_ids,
        who,
    )
    messages = await admin.fetch(
        """insert into public.messages (created_by, content, status, scheduled_for)
           select $1, 'Fuzz message ' || i, s, case when s = 'draft' then null else now() + interval '30 days' end
           from unnest($2::text[]) with ordinality as t(s, i) order by i returning id""",
        who,
        statuses,
    )
    message_ids = [r["id"] for r in messages]
    await admin.execute(
        """insert into public.message_groups (message_id, group_id, created_by)
           select m, g, $3 from unnest($1::uuid[], $2::uuid[]) as t(m, g)""",
        message_ids,
        group_ids,
        who,
    )
    notifications = await admin.fetch(
        """insert into public.notifications (user_id, type, title, message)
           select $1, 'info', 'Fuzz ' || i, 'stock' from generate_series(1, $2) i returning id""",
        who,
        count,
    )
    return {
        "message_id": [str(i) for i in message_ids],
        "group_id": [str(i) for i in group_ids],
        "contact_id": [str(i) for i in contact_ids],
        "notification_id": [str(r["id"]) for r in notifications],
    }


@pytest.fixture(scope="module")
async def owned(make_user: Any, prepared: Any) -> AsyncIterator[Owned]:
    user = await make_user()
    admin = await asyncpg.connect(prepared.admin_url)
    try:
        rows = await _owned_rows(admin, user.id, OPERATIONS)
    finally:
        await admin.close()
    yield Owned(
        user.token,
        {
            label: {kind: ids[i * STOCK : (i + 1) * STOCK] for kind, ids in rows.items()}
            for i, label in enumerate(OPERATIONS)
        },
    )


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module", autouse=True)
def coverage_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print what the run covered: operations, requests, and the statuses they got."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not STATUSES:
        return
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        reporter.ensure_newline()
        for test in sorted({test for test, _ in STATUSES}):
            answers = {label: counts for (t, label), counts in STATUSES.items() if t == test}
            total = sum(sum(c.values()) for c in answers.values())
            reporter.write_line(f"fuzz {test}: {len(answers)} operations, {total} requests")
            for label in OPERATIONS:
                if label in answers:
                    counts = ", ".join(f"{status}×{n}" for status, n in sorted(answers[label].items()))
                    reporter.write_line(f"  {label}: {counts}")


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


def call(test: str, case: schemathesis.Case, api: ApiProcess, http: requests.Session, headers: dict[str, str]) -> None:
    """Send and validate; a failure carries what the server logged meanwhile (its traceback)."""
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in FRAMING_HEADERS}
    seen = len(api.log())
    try:
        response = case.call_and_validate(base_url=base_url(api), session=http, headers=headers)
        if case.operation.label == "POST /api/sync" and response.status_code == 200:
            inner = [(r["client_op_id"], r["status"]) for r in response.json()["results"] if r["status"] >= 500]
            assert not inner, f"/api/sync replayed operations that answered 5xx: {inner}"
    except BaseException as exc:
        logged = api.log()[seen:].strip()
        if logged:
            exc.add_note("The API process logged:\n" + logged[-6000:])
        raise
    STATUSES[test, case.operation.label][response.status_code] += 1


# What the fuzzer found (each was a 500, or held a database connection for a minute and then
# answered 503), kept as plain regression tests: a later seed may never generate them again.
FOUND = [  # method, path, body, the field the answer names (None: the value, wherever it is)
    ("POST", "/api/auth/refresh", {"refresh_token": "abc\u0000def"}, None),
    ("GET", "/api/messages?q=a%00b", None, None),
    ("POST", "/api/auth/signup", {"email": "long@example.com", "password": "ñ" * 40}, "password"),
    ("GET", "/api/analytics/messages?to=0001-01-01", None, "to"),
    ("GET", "/api/analytics/messages?from=0001-01-01&to=0001-01-05", None, "from"),
    ("GET", "/api/analytics/messages?to=9999-12-31", None, "to"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), FOUND)
async def test_values_the_fuzzer_found_are_refused_with_422(
    client: httpx.AsyncClient, make_user: Any, method: str, path: str, body: Any, field: str | None
) -> None:
    user = await make_user()
    answer = await client.request(method, path, json=body, headers=user.headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_error"
    assert answer.json()["detail"]
    if field:
        assert [e["field"] for e in answer.json()["errors"]] == [field]


# What the every-check run found, kept as plain tests (api/methods.py, api/common.py).
UNDECLARED = [  # method, path, Allow
    ("PUT", "/api/messages/dashboard", "GET"),  # was read as PUT /api/messages/{message_id}: 422
    ("DELETE", "/api/notifications/unread-count", "GET"),
    ("PUT", "/api/contacts/import", "POST"),
    ("OPTIONS", "/api/messages", "GET, POST"),  # was Allow: GET
    ("PATCH", "/api/messages/00000000-0000-4000-8000-000000000000", "GET, PUT, DELETE"),
    ("POST", "/api/groups/not-even-a-uuid", "GET, PUT, DELETE"),
    ("HEAD", "/api/health", "GET"),
]


@pytest.mark.parametrize(("method", "path", "allow"), UNDECLARED)
async def test_a_method_the_path_does_not_declare_is_405_with_allow(
    client: httpx.AsyncClient, make_user: Any, method: str, path: str, allow: str
) -> None:
    user = await make_user()
    answer = await client.request(method, path, headers=user.headers)
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    if method != "HEAD":
        assert answer.json()["code"] == "method_not_allowed"
        assert answer.json()["errors"] == []


async def test_preflights_and_declared_methods_still_pass(client: httpx.AsyncClient, make_user: Any) -> None:
    user = await make_user()
    preflight = await client.options(
        "/api/messages/dashboard",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert (await client.get("/api/messages/dashboard", headers=user.headers)).status_code == 200
    assert (await client.get("/api/nowhere", headers=user.headers)).status_code == 404


REFUSED_QUERIES = [  # path, the field the 422 names
    ("/api/messages?to=0.5", "to"),  # was read as a Unix time
    ("/api/messages?created_from=1700000000", "created_from"),
    ("/api/analytics/messages?to=0", "to"),
    ("/api/reports/export?from=20250101", "from"),
    ("/api/analytics/messages?to=2025-01-27T00:00:00", "to"),  # a date takes YYYY-MM-DD only
    ("/api/groups?q=a&q=b", "q"),  # a single-valued parameter given twice (FastAPI kept the last)
]


@pytest.mark.parametrize(("path", "field"), REFUSED_QUERIES)
async def test_numbers_for_dates_and_repeated_single_values_are_422(
    client: httpx.AsyncClient, make_user: Any, path: str, field: str
) -> None:
    user = await make_user()
    answer = await client.get(path, headers=user.headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_error"
    assert [e["field"] for e in answer.json()["errors"]] == [field]


@pytest.mark.parametrize(
    "path",
    [
        "/api/messages?to=2025-01-27T10:00:00Z&from=2025-01-01T00:00:00%2B01:00",
        "/api/messages?created_from=2025-01-27T10:00:00",  # no offset: read in the profile's timezone
        "/api/messages?created_to=2025-01-27",
        "/api/messages?status=draft&status=sent",  # an array parameter may repeat
        "/api/analytics/messages?from=2025-01-01&to=2025-01-31",
    ],
)
async def test_iso_dates_and_repeated_arrays_are_accepted(client: httpx.AsyncClient, make_user: Any, path: str) -> None:
    user = await make_user()
    answer = await client.get(path, headers=user.headers)
    assert answer.status_code == 200, answer.text


def test_the_api_serves_the_schema_that_is_fuzzed(fuzz_api: ApiProcess, http: requests.Session) -> None:
    served = http.get(base_url(fuzz_api) + "/openapi.json", timeout=30).json()
    assert served == DOCUMENTED
    assert len(OPERATIONS) >= 46


# Every check Schemathesis has, in every phase `parametrize` runs (examples, coverage, fuzzing; the
# stateful phase needs links our document does not have), on a fixed seed and fewer examples, so it is
# the same run each time and fits CI. Among the checks: a method a path does not declare answers 405
# with an `Allow` header listing exactly the declared ones (api/methods.py), and a number for a date or
# date-time query parameter is refused (api/common.py's QueryDate, QueryDateTime). Two settings say
# what our API is, rather than what the checks assume:
# - unknown query parameters and body properties are ignored, as everywhere (allow-extra-parameters);
# - a schema-valid request may be refused 422 by a rule the document does not state (a name blank once
#   trimmed, a cron expression, a country code, a range of at most 366 days, content, spam and send-time
#   rules), always with our error body naming the field; 400 or 415 for a schema-valid request still fail.
STRICT_SEED = 4242
STRICT_EXAMPLES = 25
POSITIVE_REFUSALS = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]


def strict_config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": STRICT_SEED,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
            "generation": {
                "mode": "all",
                "max-examples": STRICT_EXAMPLES,
                "database": "none",
                "no-shrink": True,
                "allow-extra-parameters": False,
            },
            "phases": {phase: {"enabled": True} for phase in ("examples", "coverage", "fuzzing")},
            "checks": {"enabled": True, "positive_data_acceptance": {"expected-statuses": POSITIVE_REFUSALS}},
            "request-timeout": 60,
        }
    )


strict_schema = schemathesis.openapi.from_dict(DOCUMENTED, config=strict_config())


@strict_schema.parametrize()
def test_every_operation_passes_every_check(
    case: schemathesis.Case, fuzz_api: ApiProcess, owned: Owned, http: requests.Session
) -> None:
    owned.adapt(case, csv=False)
    call("every check", case, fuzz_api, http, {"Authorization": f"Bearer {owned.token}"})


@schema.parametrize()
def test_every_operation_with_a_token_answers_as_documented(
    case: schemathesis.Case, fuzz_api: ApiProcess, owned: Owned, http: requests.Session
) -> None:
    owned.adapt(case)
    call("with a token", case, fuzz_api, http, {"Authorization": f"Bearer {owned.token}"})


@schema.parametrize()
@hypothesis_settings(max_examples=EXAMPLES_WITHOUT_TOKEN)
def test_every_operation_without_a_token_answers_as_documented(
    case: schemathesis.Case, fuzz_api: ApiProcess, http: requests.Session
) -> None:
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    call("without a token", case, fuzz_api, http, {})
