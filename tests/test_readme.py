"""The README's commands match what exists: CI's test command, the CLI, prefect.yaml.

Pure text checks (plus the CLI's argparse parser): fast, no network, no Prefect import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from counterfactual_lab.flows.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PREFECT_YAML = yaml.safe_load((ROOT / "prefect.yaml").read_text())


def section(title: str) -> str:
    """The README text under ``## title`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def code_text() -> str:
    """Every fenced block and inline code span of the README, one per line."""
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", README, flags=re.M | re.S))
    return "\n".join(code_blocks(README) + spans)


def subparser_choices(parser) -> dict:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def flow_names() -> dict[str, str]:
    """entrypoint ``file.py:function`` -> the flow's name, read from the source (no import)."""
    names = {}
    for deployment in PREFECT_YAML["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        tree = ast.parse((ROOT / path).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == function:
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "flow":
                        for keyword in decorator.keywords:
                            if keyword.arg == "name":
                                names[deployment["entrypoint"]] = keyword.value.value
                names.setdefault(deployment["entrypoint"], function.replace("_", "-"))
    return names


def deployment_full_names() -> set[str]:
    flows = flow_names()
    return {f"{flows[d['entrypoint']]}/{d['name']}" for d in PREFECT_YAML["deployments"]}


def test_quick_start_has_exactly_two_commands_and_the_second_is_what_ci_runs():
    blocks = code_blocks(section("Quick start"))
    assert len(blocks) == 1, "the Quick start holds one code block"
    quick = commands(blocks[0])
    assert len(quick) == 2, f"the Quick start must hold exactly two commands, found {quick}"
    ci = commands((ROOT / ".ci" / "run").read_text())
    assert ci[-1] == quick[1], ".ci/run must run the README's test command, nothing less"
    assert quick[0].endswith("cflab demo"), "the first command runs the demo"


def test_every_cflab_subcommand_in_the_readme_exists():
    top = subparser_choices(build_parser())
    mentioned = re.findall(r"(?:^|[\s`(&;|$])cflab ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", code_text(), flags=re.M)
    assert mentioned, "the README mentions no cflab command"
    for name, sub in mentioned:
        assert name in top, f"README mentions `cflab {name}`, which build_parser() does not have"
        nested = subparser_choices(top[name])
        if nested:
            assert sub in nested, f"README mentions `cflab {name} {sub}`; {name} has {sorted(nested)}"
    # And every subcommand is documented.
    assert {name for name, _ in mentioned} == set(top), "every cflab subcommand appears in the README"


def test_every_deployment_named_in_the_readme_exists_in_prefect_yaml():
    known = deployment_full_names()
    text = code_text()
    named = set(re.findall(r"prefect deployment run '([^']+)'", text))
    named |= {s for s in re.findall(r"^([a-z][a-z-]*/[a-z][a-z-]*)$", text, flags=re.M)}
    assert named, "the README names no deployment"
    unknown = named - known
    assert not unknown, f"README names deployments that prefect.yaml does not define: {sorted(unknown)} (known: {sorted(known)})"
    assert known <= named, f"README does not mention every deployment: missing {sorted(known - named)}"


def test_prefect_ui_commands_use_the_real_pool_event_and_tag():
    ui = section("Run it in the Prefect UI")
    pools = {d["work_pool"]["name"] for d in PREFECT_YAML["deployments"]}
    for pool in re.findall(r"--pool ([\w-]+)", ui) + re.findall(r"work-pool create ([\w-]+)", ui):
        assert pool in pools, f"README uses work pool {pool!r}; prefect.yaml uses {sorted(pools)}"
    event = re.search(r'DATASET_UPDATED_EVENT = "([^"]+)"', (ROOT / "flows" / "watch.py").read_text()).group(1)
    assert f"prefect event emit {event} " in ui
    expected = {e for d in PREFECT_YAML["deployments"] for t in d.get("triggers", []) for e in t["expect"]}
    assert event in expected, "the audit-on-new-data trigger expects the watcher's event"
    tag = re.search(r"prefect concurrency-limit create (\w+) \d+", ui).group(1)
    assert 'tags=["gpu"]' in (ROOT / "tasks" / "generate.py").read_text() and tag == "gpu"


@pytest.mark.parametrize("target", ["docs/metrics.md", "bench/RESULTS.md", "infra/README.md", "prefect.yaml",
                                    "configs/audit.yaml", "datasets/sample.yaml"])
def test_linked_files_exist(target):
    assert f"]({target})" in README, f"README should link {target}"
    assert (ROOT / target).exists()


def test_every_relative_link_resolves():
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README):
        assert (ROOT / target).exists(), f"README links {target}, which does not exist"


def test_the_torch_note_speaks_to_an_outside_user():
    quick = section("Quick start")
    assert "this project's machines" not in quick and "lies on disk" not in quick
    assert "torch==2.13.0" in quick and "torchvision is not needed" in quick


def test_exit_codes_match_the_cli():
    from counterfactual_lab.flows import cli

    text = " ".join(section("The `cflab` command").split())
    assert "`1` the data failed a limit you set" in text and "`runtime.max_invalid_fraction` (an audit)" in text
    assert "`--max-invalid-fraction`" in text and "runtime.max_failed_fraction" in text
    assert "`2` anything else" in text and "--debug" in text
    assert (cli.EXIT_OK, cli.EXIT_OVER_LIMIT, cli.EXIT_USAGE) == (0, 1, 2)
    assert "too many quarantined rows in an audit" not in README  # the old, wrong "exit 2" claim


def test_every_cflab_argument_has_help_text():
    import argparse

    for name, sub in subparser_choices(build_parser()).items():
        for parser in [sub, *subparser_choices(sub).values()]:
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                    continue
                assert action.help, f"cflab {name}: argument {action.dest} has no help text"


def test_prefect_server_start_in_the_repo_root_sends_no_telemetry():
    """The README's `prefect server start` runs offline without "ERROR | Failed to send telemetry":
    Prefect reads [tool.prefect] from pyproject.toml in the directory it runs in."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "DO_NOT_TRACK"}
    code = "from prefect.settings import get_current_settings as g; print(g().server.analytics_enabled)"
    here = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert here.stdout.strip() == "False", here.stderr
    elsewhere = subprocess.run([sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert elsewhere.stdout.strip() == "True", "the setting must come from this repository's pyproject.toml"


def test_the_command_table_lists_every_option_of_each_command():
    """Each `cflab <command> ...` row of the README's command table names every option the
    parser has for that command (``--force`` of ``generate`` was missing once)."""
    import argparse

    rows = dict(re.findall(r"^\| `cflab ([a-z][a-z-]*(?: [a-z]+)?)([^`]*)` \|", section("The `cflab` command"), flags=re.M))
    assert rows, "the README's command table has no cflab rows"
    top = subparser_choices(build_parser())
    for command, usage in rows.items():
        name, _, sub = command.partition(" ")
        parser = top[name] if not sub else subparser_choices(top[name])[sub]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or not action.option_strings:
                continue
            if action.default is argparse.SUPPRESS or set(action.option_strings) <= {"--verbose", "--debug"}:
                continue  # the output flags every command shares, documented once
            assert any(option in usage.split(" ") or f"[{option}" in usage for option in action.option_strings), (
                f"`cflab {command}` in the README lacks {action.option_strings[0]}"
            )
