"""The conversation of `guestfenced --configure`: ask, re-ask, show, confirm, write.

Answers come from a terminal (with line editing), or one per line from a
pipe (a blank line takes the default), or not at all with ``--defaults``.
Nothing is written until every answer is valid and the result is confirmed;
the file is replaced atomically (temporary file, fsync, rename) and the old
one is kept as ``<file>.bak``.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Callable
from typing import TextIO

from guestfence.errors import ConfigError, GuestfenceError
from guestfence.host.config import Node, parse_tree
from guestfence.host.configure import (
    Answers,
    Detected,
    answer,
    config_text,
    defaults,
    detect,
    questions,
)
from guestfence.host.keys import fingerprint, load_daemon_key
from guestfence.keygen import write_key

Ask = Callable[[str], "str | None"]  # prompt -> the answer line, None at end of input


def stdin_ask(out: TextIO) -> Ask:
    """Read answers from standard input; a pipe's answers are echoed for the transcript."""
    def ask(prompt: str) -> str | None:
        if sys.stdin.isatty():
            try:
                return input(prompt)
            except EOFError:
                return None
        out.write(prompt)
        line = sys.stdin.readline()
        if not line:
            out.write("\n")
            return None
        out.write(line if line.endswith("\n") else line + "\n")
        return line.rstrip("\n")
    return ask


def read_existing(path: str, out: TextIO) -> tuple[Node, ...]:
    """The existing file's tree, or () when there is none or it cannot be read."""
    if not os.path.exists(path):
        return ()
    try:
        with open(path, encoding="utf-8") as f:
            return parse_tree(f.read(), path)
    except (OSError, UnicodeDecodeError, ConfigError) as e:
        out.write(f"Note: the existing {path} cannot be used for defaults ({e}); it will be "
                  f"kept as {path}.bak\n")
        return ()


def ask_all(detected: Detected, ask: Ask, out: TextIO) -> Answers:
    answers = Answers()
    for question in questions(detected):
        if not question.asked(answers):
            continue
        if question.explain:
            out.write(f"\n{question.explain}\n")
        while True:
            line = ask(f"{question.prompt} [{question.default(answers)}]: ")
            if line is None:
                raise ConfigError(f"no answer for {question.prompt!r} (end of input); "
                                  "nothing was written")
            try:
                answers = answer(question, line, answers)
                break
            except ValueError as e:
                out.write(f"  {e}. Please try again.\n")
    return answers


def confirm(ask: Ask, prompt: str, default: bool) -> bool:
    while True:
        line = ask(f"{prompt} [{'Y/n' if default else 'y/N'}]? ")
        if line is None:
            return False
        reply = line.strip().lower()
        if not reply:
            return default
        if reply in ("y", "yes", "n", "no"):
            return reply.startswith("y")


def write_config(path: str, text: str) -> None:
    """Replace `path` atomically with `text` (mode 0600), keeping the old file as .bak."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):
            shutil.copy2(path, f"{path}.bak")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def offer_key(key_file: str, ask: Ask, out: TextIO, use_defaults: bool) -> None:
    if os.path.exists(key_file):
        st = os.stat(key_file)
        mode = stat.S_IMODE(st.st_mode)
        if mode != 0o600:
            out.write(f"Warning: {key_file} has mode {mode:04o}; guestfenced needs 0600 "
                      f"(chmod 600 {key_file}).\n")
        if st.st_uid not in (0, os.geteuid()):
            out.write(f"Warning: {key_file} belongs to uid {st.st_uid}; guestfenced needs it "
                      f"to belong to root (chown 0 {key_file}), and if that user may have "
                      f"read it, a new key (guestfence keygen --force {key_file}).\n")
        return
    if not (use_defaults or confirm(ask, f"The key file {key_file} does not exist. "
                                         "Create it now", True)):
        out.write(f"guestfenced will not start without it: guestfence keygen {key_file}\n")
        return
    os.makedirs(os.path.dirname(key_file), mode=0o755, exist_ok=True)
    write_key(key_file)
    out.write(f"Wrote {key_file} (4096 random bytes, mode 0600, fingerprint "
              f"{fingerprint(load_daemon_key(key_file))}). Copy it to every guest of the "
              "cluster, where fence_xvm and fence_virt read /etc/cluster/fence_xvm.key unless "
              "given -k; compare with: guestfence keys fingerprint FILE.\n")


def run_configure(path: str, *, use_defaults: bool = False, ask: Ask | None = None,
                  out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The wizard; 0 when the file was written, 1 when it was not (with the reason)."""
    ask = ask or stdin_ask(out)
    existing = read_existing(path, out)
    detected = detect(existing)
    for note in detected.notes:
        out.write(f"Note: {note}\n")
    try:
        answers = defaults(detected) if use_defaults else ask_all(detected, ask, out)
        text = config_text(answers, existing)
    except ValueError as e:  # only --defaults: a default that is not valid here
        err.write(f"guestfenced --configure: a default does not fit this machine: {e}; "
                  "answer the questions instead (without --defaults)\n")
        return 1
    except GuestfenceError as e:
        err.write(f"guestfenced --configure: {e}\n")
        return 1
    out.write(f"\n=== {path} ===\n{text}=== end ===\n")
    if not use_defaults and not confirm(ask, f"Replace {path} with the above", False):
        out.write("Nothing was written.\n")
        return 1
    had_file = os.path.exists(path)
    try:
        write_config(path, text)
        out.write(f"Wrote {path}" + (f" (the old one is {path}.bak)" if had_file else "")
                  + ".\n")
        if answers.listener != "serial":
            offer_key(answers.key_file, ask, out, use_defaults)
    except (OSError, GuestfenceError) as e:
        err.write(f"guestfenced --configure: {e}\n")
        return 1
    out.write("Restart guestfenced to use it (systemctl restart guestfenced).\n")
    return 0
