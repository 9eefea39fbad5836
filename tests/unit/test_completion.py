"""Shell completion generated from the option definitions: valid scripts, every option,
and real candidates from bash's completion machinery."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.cli import build_parser as cli_parser
from guestfence.completion import agents, bash_script, option_words, zsh_script
from guestfence.host.main import build_parser as daemon_parser

ROOT = Path(__file__).resolve().parents[2]
NO_OPTION_TABLE = {"fence_scsi_check"}  # the watchdog hook: argv is not options

# COMP_WORDS driver: the last argument is the word being completed
DRIVER = r"""
drive() {
  COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
  COMPREPLY=()
  local spec; spec=$(complete -p "$1") || { echo "no completion for $1"; return 1; }
  local fn=${spec#*-F }; fn=${fn%% *}
  "$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
  printf '%s\n' "${COMPREPLY[@]}"
}
"""


def shell(name: str) -> str:
    tool = shutil.which(name)
    assert tool, f"{name} is missing: install the Debian package {name} (make test-deps)"
    return tool


@pytest.fixture(scope="module")
def bash_text() -> str:
    return bash_script()


def all_options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        yield from action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices  # sub-command names are completed too
            for sub in action.choices.values():
                yield from all_options(sub)


def test_bash_script_is_valid_and_has_every_option(bash_text: str, tmp_path: Path) -> None:
    path = tmp_path / "guestfence.bash"
    path.write_text(bash_text)
    r = subprocess.run([shell("bash"), "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    words = set(re.split(r"[\s\"'|()=]+", bash_text))
    for parser in (cli_parser(), daemon_parser()):
        missing = set(all_options(parser)) - words
        assert not missing, f"{parser.prog}: {sorted(missing)} not in the bash script"
    for agent in agents():
        missing = set(option_words(agent.params)) - words
        assert not missing, f"{agent.name}: {sorted(missing)} not in the bash script"


def test_every_agent_script_has_completion() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    shipped = {name for name in scripts if name.startswith("fence_")} - NO_OPTION_TABLE
    assert shipped == {agent.name for agent in agents()}


@pytest.mark.parametrize(("words", "expected"), [
    (["fence_xvm", "-o", "re"], {"reboot"}),
    (["fence_xvm", "-c", "sha"], {"sha1", "sha256", "sha512"}),
    (["fence_scsi", "--action", "=", "st"], {"status"}),
    (["fence_scsi", "--key-val"], {"--key-value"}),
    (["fence_rhevm", "--api-version", ""], {"auto", "3", "4"}),
    (["guestfenced", "--conf"], {"--configure"}),
    (["guestfence", "comp"], {"completion"}),
    (["guestfence", "completion", ""], {"bash", "zsh"}),
])
def test_bash_completes_partial_words(bash_text: str, tmp_path: Path, words: list[str],
                                      expected: set[str]) -> None:
    script = tmp_path / "guestfence.bash"
    script.write_text(bash_text)
    argv = " ".join(f"'{w}'" for w in words)
    r = subprocess.run([shell("bash"), "--norc", "-c", f"source {script}\n{DRIVER}\ndrive {argv}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(r.stdout.split()) == expected, r.stdout + r.stderr


def test_bash_completes_file_names_for_the_key_file(bash_text: str, tmp_path: Path) -> None:
    (tmp_path / "fence_xvm.key").touch()
    script = tmp_path / "guestfence.bash"
    script.write_text(bash_text)
    r = subprocess.run([shell("bash"), "--norc", "-c",
                        f"source {script}\n{DRIVER}\ndrive fence_xvm -k {tmp_path}/fence_x"],
                       capture_output=True, text=True, timeout=30)
    assert r.stdout.split() == [f"{tmp_path}/fence_xvm.key"], r.stdout + r.stderr


def test_zsh_script_is_valid_and_registers_every_command(tmp_path: Path) -> None:
    path = tmp_path / "_guestfence"
    text = zsh_script()
    path.write_text(text)
    zsh = shell("zsh")
    r = subprocess.run([zsh, "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    commands = ["guestfence", "guestfenced", *(a.name for a in agents())]
    assert text.splitlines()[0] == "#compdef " + " ".join(commands)
    probe = " ".join(f"${{_comps[{c}]:-MISSING-{c}}}" for c in commands)
    r = subprocess.run([zsh, "-f", "-c", f"autoload -U compinit && compinit -u -D; "
                        f"source {path}; print -r -- {probe}"],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "MISSING" not in r.stdout and len(r.stdout.split()) == len(commands), \
        r.stdout + r.stderr


ZPTY_DRIVER = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "PS1='P> '; fpath=($FPATH_DIR \$fpath); autoload -U compinit; compinit -u -D"
complete_word() {  # type the line and TAB, then read until the completed word shows
  zpty -w -n z $'\x15'"$1"$'\t'
  local buf="" chunk deadline=$(( SECONDS + 30 ))
  while (( SECONDS < deadline )); do
    if zpty -r -t z chunk; then buf+=$chunk; [[ $buf == *"$2"* ]] && { print "GOT $2"; return; }
    else sleep 0.05; fi
  done
  print "TIMEOUT $2: $buf"
}
"""


def test_zsh_completes_partial_words_from_fpath(tmp_path: Path) -> None:
    (tmp_path / "_guestfence").write_text(zsh_script())
    checks = [("fence_xvm -o reb", "reboot"), ("guestfenced --conf", "--configure"),
              ("guestfence compl", "completion")]
    body = "\n".join(f"complete_word '{line}' '{word}'" for line, word in checks)
    r = subprocess.run([shell("zsh"), "-f", "-c", f"{ZPTY_DRIVER}\n{body}\nzpty -d z"],
                       capture_output=True, text=True, timeout=120,
                       env={"FPATH_DIR": str(tmp_path), "PATH": "/usr/bin:/bin",
                            "TERM": "dumb", "HOME": str(tmp_path)})
    assert [line for line in r.stdout.splitlines() if line.startswith(("GOT", "TIMEOUT"))] \
        == [f"GOT {word}" for _, word in checks], r.stdout + r.stderr
