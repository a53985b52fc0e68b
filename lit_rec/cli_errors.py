"""A jsonargparse parse error as a short paragraph: the bad key, the flag or config file line it came from, and the
closest valid keys; full usage stays with `--help`."""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

# `--config FILE` and the group files (`--data FILE`, `--trainer FILE`, ...): (flag, key prefix inside the file)
CONFIG_FLAGS = ("--config", "-c")
# the Union-subtype report of a subclass-mode key: `Parser key "model": ... Problem with given class_path 'C':`
CLASS_PROBLEM = re.compile(r'Parser key "(?P<key>[^"]+)":.*?Problem with given class_path \'(?P<cls>[^\']+)\':\n'
                           r'(?P<inner>(?:        [^\n]*\n?)+)', re.S)
UNKNOWN_IN_CLASS = re.compile(r"^\s*(?:Option '(?P<opt>[^']+)' is not accepted|unrecognized arguments: --(?P<arg>[^\s=]+))")
UNRECOGNIZED = re.compile(r"^unrecognized arguments: (?P<args>.*)")
GROUP_OPTION = re.compile(r"^(?:Group '(?P<group>[^']+)'|Subcommand '[^']+') does not accept option '(?P<opt>[^']+)'")
# keys LightningCLI offers elsewhere that lit_rec leaves out, and why
NOT_KEYS = {name: ": every lit_rec method builds its own optimiser (`--model.init_args.lr`, ...)"
            for name in ("optimizer", "lr_scheduler")}
TOP_OPTION = re.compile(r"^Option '(?P<opt>[^']+)' is not accepted")


def short_parse_error(message: str, parser: ArgumentParser, args: list[str]) -> str:
    """`message` (a jsonargparse ArgumentError's) in at most three lines for `parser` (the subcommand's) that
    parsed `args`: `error: <key> (<flag, or file and line>) is not a key ...; did you mean ...?` and a tip."""
    prog = parser.prog.replace(" [options]", "")
    tip = f"tip: `{prog} --help` lists every key"
    found = CLASS_PROBLEM.search(message)
    if found:  # a subclass-mode key (model, early_stopping, a callback): the chosen class's init args
        parent, class_path = found["key"], found["cls"]
        unknown = UNKNOWN_IN_CLASS.match(found["inner"])
        if not unknown:
            inner = re.sub(r'Parser key "([^"]+)":', rf"{parent}.init_args.\1 ({class_path}):", " ".join(found["inner"].split()))
            return f"error: {inner}\n{tip}"
        name = unknown["opt"] or unknown["arg"]
        flag = _flag_for(args, parent, name)
        keys = _class_keys(class_path)
        if flag:
            prefix = flag[2:].removesuffix(name)  # as typed: `model.init_args.` or `model.`
            where, shown, close = "on the command line", flag, [f"--{prefix}{k}" for k in _closest(name, keys)]
        else:
            where = _config_location(parser, args, [parent, "init_args", *name.split(".")]) \
                or _config_location(parser, args, [parent, *name.split(".")]) or "in a config file"
            shown, close = f"{parent}.init_args.{name}", [f"{parent}.init_args.{k}" for k in _closest(name, keys)]
        tip = f"tip: `{prog} --{parent}.help {class_path}` lists its keys"
        return _render(shown, where, f"a key of {class_path}", close, tip)
    first = message.splitlines()[0] if message else ""
    keys = _parser_keys(parser)
    unrecognized = UNRECOGNIZED.match(first)
    if unrecognized:
        flag = next((a for a in unrecognized["args"].split() if a.startswith("-")), unrecognized["args"])
        name = flag.lstrip("-").split("=", 1)[0]
        return _render(flag.split("=", 1)[0], "on the command line", "a key" + NOT_KEYS.get(name.split(".")[0], ""),
                       ["--" + k for k in _closest(name, keys)], tip)
    option = GROUP_OPTION.match(first) or TOP_OPTION.match(first)
    if option:
        name = ".".join(filter(None, [option.groupdict().get("group"), option["opt"]]))
        where = _config_location(parser, args, name.split(".")) or "in a config file"
        return _render(name, where, "a key", _closest(name, keys), tip)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "error: " + re.sub(r'Parser key "([^"]+)":', r"\1:", " ".join(lines[:3])) + f"\n{tip}"


def _render(shown: str, where: str, what: str, close: list[str], tip: str) -> str:
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"error: {shown} ({where}) is not {what}{hint}\n{tip}"


def _closest(name: str, keys: list[str]) -> list[str]:
    """The valid keys nearest to `name` (difflib), compared whole and by their last part."""
    close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
    if not close:
        last = {key.rsplit(".", 1)[-1]: key for key in keys if key.rsplit(".", 1)[0] == name.rpartition(".")[0]}
        close = [last[k] for k in difflib.get_close_matches(name.rsplit(".", 1)[-1], list(last), n=3, cutoff=0.6)]
    return close


def _parser_keys(parser: ArgumentParser) -> list[str]:
    """Every `--key` the parser takes, without the dashes."""
    return sorted({option[2:] for action in parser._actions for option in action.option_strings
                   if option.startswith("--") and not option.endswith(".help")})


def _class_keys(class_path: str) -> list[str]:
    """The init args of `class_path`, nested ones dotted (`encoder.dim`)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
    except Exception:  # an unimportable class already failed elsewhere; suggestions are a courtesy
        return []
    return [action.dest for action in parser._actions if action.dest != "help"]


def _flag_for(args: list[str], parent: str, name: str) -> str | None:
    """The `--parent[.init_args].name` flag of `args` that set `name`, as typed (without its value)."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in (f"--{parent}.{name}", f"--{parent}.init_args.{name}"):
            return flag
    return None


def _config_location(parser: ArgumentParser, args: list[str], path: list[str]) -> str | None:
    """`FILE, line N` of the last config file that sets the key `path`: the parser's default config files, then
    those of `args` (`--config FILE`, or a group file `--data FILE` for the keys under `data`)."""
    found = None
    for flag, file in [("--config", str(f)) for f in parser.default_config_files or []] + _config_files(args):
        inner = path if flag in CONFIG_FLAGS else path[1:] if path[0] == flag[2:] else None
        line = _yaml_line(Path(file), inner) if inner else None
        if line:
            found = f"{file}, line {line}"
    return found


def _config_files(args: list[str]) -> list[tuple[str, str]]:
    """(flag, file) for each `--config FILE` and `--group FILE` (a flag without a dot, given a .yaml/.json)."""
    files = []
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag.startswith("-") and "." not in flag and value.endswith((".yaml", ".yml", ".json")):
            files.append((flag, value))
    return files


def _yaml_line(file: Path, path: list[str]) -> int | None:
    """The 1-based line of the key `path` in the YAML `file`, None when it has no such key."""
    try:
        node: Any = yaml.compose(file.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            return None
        line, node = match[0].start_mark.line + 1, match[1]
    return line
