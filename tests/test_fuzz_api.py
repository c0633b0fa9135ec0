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

    def adapt(self, case: schemathesis.Case) -> None:
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
        if case.meta is None or case.meta.generation.mode != schemathesis.GenerationMode.POSITIVE:
            return  # hostile inputs stay exactly as generated
        if isinstance(case.body, dict):
            case.body = self._body(label, case.body, mine, n)

    def _phone(self) -> str:
        return f"+569{next(self.phones)}"  # a Chilean mobile number: valid, and new each time

    def _body(self, label: str, body: dict[str, Any], mine: dict[str, list[str]], n: int) -> dict[str, Any]:
        body = dict(body)
        if isinstance(body.get("phone"), str):
            body["phone"] = self._phone()
        if isinstance(body.get("scheduled_for"), str):  # the API takes only the coming year
            body["scheduled_for"] = (datetime.now(UTC) + timedelta(days=1 + n % 300)).isoformat()
        for key, kind in (("group_ids", "group_id"), ("contact_ids", "contact_id")):
            if isinstance(body.get(key), list) and body[key]:
                body[key] = [mine[kind][(n + i) % STOCK] for i in range(min(len(body[key]), STOCK))]
        if label == "POST /api/contacts/import" and "file" in body:
            body["file"] = self._csv()
        if label == "POST /api/sync" and isinstance(body.get("operations"), list):
            body["operations"] = [
                {**op, "path": self._sync_path(mine, n + i)} if isinstance(op, dict) else op
                for i, op in enumerate(body["operations"])
            ]
        return body

    def _csv(self) -> bytes:
        """Spanish headers, a new phone, a national number, a repeated one and a bad one."""
        first, second = self._phone(), self._phone()
        rows = [
            "nombre;teléfono;correo",
            f"Ana Pérez;{first};ana@example.com",
            f"Luis;{second[3:]};",  # national: 9 digits, read as Chilean (the profile's default country)
            f"Ana otra vez;{first};",
            "Nadie;12;no-es-correo",
        ]
        return ("\n".join(rows) + "\n").encode()

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


def test_the_api_serves_the_schema_that_is_fuzzed(fuzz_api: ApiProcess, http: requests.Session) -> None:
    served = http.get(base_url(fuzz_api) + "/openapi.json", timeout=30).json()
    assert served == DOCUMENTED
    assert len(OPERATIONS) >= 46


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
