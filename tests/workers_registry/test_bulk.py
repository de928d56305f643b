"""Bulk import files: parsing (pure) and one-transaction imports on both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dispatcher.cli import main
from dispatcher.errors import Conflict, InvalidRequest
from tests.workers_registry.registry_kit import announced, announced_up_to
from workers_registry.bulk import ImportFormat, parse_domains, parse_workers
from workers_registry.migrate import upgrade
from workers_registry.models import CustomDomainCreate, DomainStatus
from workers_registry.store import RegistryStore

WORKER = '{"name": "shop", "upstreams": ["http://10.0.0.1:8080"]}'


@pytest.mark.parametrize(
    ("lines", "fmt", "names"),
    [
        pytest.param([WORKER], "jsonl", ["shop"], id="jsonl"),
        pytest.param(["", WORKER, "   "], "jsonl", ["shop"], id="blank-lines"),
        pytest.param(
            ["name,upstreams,enabled,max_concurrency", "shop,http://a http://b,false,8"],
            "csv",
            ["shop"],
            id="csv",
        ),
        pytest.param(["NAME , Upstreams", '"shop","http://a"'], "csv", ["shop"], id="csv-quoted"),
    ],
)
def test_good_files_parse(lines: list[str], fmt: ImportFormat, names: list[str]) -> None:
    assert [worker.name for worker in parse_workers(lines, fmt).records] == names


def test_csv_cells_become_typed_fields() -> None:
    parsed = parse_workers(
        ["name,upstreams,enabled,max_concurrency", "shop,http://a http://b/,false,8"], "csv"
    )

    worker = parsed.records[0]
    assert (worker.upstreams, worker.enabled, worker.max_concurrency) == (
        ["http://a", "http://b"],
        False,
        8,
    )
    assert parsed.labels == ["line 2"]


@pytest.mark.parametrize(
    ("lines", "fmt", "bad"),
    [
        pytest.param([WORKER, "{not json"], "jsonl", ["line 2"], id="garbage"),
        pytest.param([WORKER, "[1, 2]"], "jsonl", ["line 2"], id="not-an-object"),
        pytest.param([WORKER, '{"name": "x", "upstreams": NaN}'], "jsonl", ["line 2"], id="nan"),
        pytest.param(
            ['{"name": "admin", "upstreams": ["http://a"]}'], "jsonl", ["line 1"], id="reserved"
        ),
        pytest.param(
            ['{"name": "x", "upstreams": ["http://a"], "max_concurrency": "8"}'],
            "jsonl",
            ["line 1"],
            id="json-types",
        ),
        pytest.param([WORKER, "", WORKER], "jsonl", ["line 3"], id="duplicate"),
        pytest.param(
            ["name,upstreams,colour", "shop,http://a,red"], "csv", ["line 1"], id="header"
        ),
        pytest.param(["name,upstreams", "shop"], "csv", ["line 2"], id="short-row"),
        pytest.param(["name,upstreams,enabled", "shop,http://a,yes"], "csv", ["line 2"], id="bool"),
        pytest.param(
            ["name,upstreams", "shop,ftp://a", "x,"], "csv", ["line 2", "line 3"], id="two"
        ),
        pytest.param(["x" * 300_000], "jsonl", ["line 1"], id="huge-line"),
        pytest.param(["", " "], "jsonl", ["file"], id="empty"),
        pytest.param(["name,upstreams"], "csv", ["file"], id="header-only"),
    ],
)
def test_a_bad_line_rejects_the_file_naming_it(
    lines: list[str], fmt: ImportFormat, bad: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_workers(lines, fmt)

    assert [detail["field"] for detail in caught.value.details or ()] == bad
    assert bad[0] in caught.value.message


def test_domains_are_normalised_and_default_to_pending() -> None:
    parsed = parse_domains(['{"domain": "Shop.Example.ORG.", "worker": "shop"}'], "jsonl")

    assert parsed.records == [CustomDomainCreate(domain="shop.example.org", worker="shop")]
    assert parsed.records[0].status is DomainStatus.PENDING


# -- the store -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_import_is_one_transaction_or_nothing(store: RegistryStore) -> None:
    workers = parse_workers([WORKER], "jsonl")
    assert await store.import_workers(workers.records, workers.labels) == 1
    domains = parse_domains(
        [
            '{"domain": "a.example.org", "worker": "shop"}',
            '{"domain": "b.example.org", "worker": "ghost"}',
        ],
        "jsonl",
    )
    version = await store.version()

    with pytest.raises(InvalidRequest) as caught:
        await store.import_domains(domains.records, domains.labels)

    assert caught.value.details == [{"field": "line 2", "message": "worker 'ghost' does not exist"}]
    assert await store.list_domains() == []
    assert await store.version() == version
    with pytest.raises(Conflict):
        await store.import_workers(workers.records, workers.labels)


@pytest.mark.anyio
@pytest.mark.postgres
async def test_an_import_of_100k_domains_sends_one_notification(postgres_url: str) -> None:
    await upgrade(postgres_url)
    async with announced(postgres_url) as received, RegistryStore.from_url(postgres_url) as store:
        workers = parse_workers([WORKER], "jsonl")
        await store.import_workers(workers.records, workers.labels)
        domains = [  # built, not parsed: parsing is tested above
            CustomDomainCreate.model_construct(
                domain=f"d{i}.example.org", worker="shop", status=DomainStatus.ACTIVE
            )
            for i in range(100_000)
        ]
        assert await store.import_domains(domains) == 100_000
        await announced_up_to(store, received)
        await asyncio.sleep(0)  # anything else queued after them is delivered too
        assert await store.version() == 100_001

    # The import of one worker carries its change; the 100k domains are too many to carry.
    assert received == [
        {"seq": 1, "first": 1, "changes": [["workers", "shop", "insert"]]},
        {"seq": 100_001},
    ]


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_import_reports_the_bad_line_and_writes_nothing(
    registry_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", registry_url)
    workers = tmp_path / "workers.csv"
    workers.write_text("name,upstreams\nshop,http://10.0.0.1\nblog,http://10.0.0.2\n")
    domains = tmp_path / "domains.jsonl"
    domains.write_text(
        '{"domain": "a.example.org", "worker": "shop", "status": "active"}\n'
        '{"domain": "b.example.org", "worker": "blog", "status": "bogus"}\n'
    )

    assert main(["workers", "import", str(workers)]) == 0
    assert "imported 2 workers" in capsys.readouterr().out
    assert main(["domains", "import", str(domains)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "nothing was written" in err
    assert main(["domains", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
