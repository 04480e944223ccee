"""Bash completion, generated from the argument parser itself so it never drifts."""

from __future__ import annotations

import argparse


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser) -> list[str]:
    """Options and fixed positional choices (e.g. `report classes`) of one parser."""
    words = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            words += list(action.choices)
        elif action.option_strings:
            words += [o for o in action.option_strings if o.startswith("--") or len(action.option_strings) == 1]
        elif action.choices:
            words += [str(c) for c in action.choices]
    return words


def _valued(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions if a.option_strings and a.nargs != 0 and not isinstance(
        a, (argparse._HelpAction, argparse._VersionAction)) for o in a.option_strings]


def bash(parser: argparse.ArgumentParser) -> str:
    """A `complete -F` function: subcommands, then each subcommand's options and choices."""
    prog = parser.prog
    cases = []
    for name, sub in sorted(subparsers(parser).items()):
        nested = subparsers(sub)
        for inner, inner_parser in sorted(nested.items()):
            cases.append(f'        "{name} {inner}") words="{" ".join(_words(inner_parser))}" ;;')
        cases.append(f'        "{name}") words="{" ".join(_words(sub))}" ;;')
    valued = sorted(set(_valued(parser)) | {o for s in subparsers(parser).values() for o in _valued(s)})
    return f"""# bash completion for {prog}; install: {prog} completion bash > /etc/bash_completion.d/{prog}
_{prog}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} path="" words="" i w
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        case $w in
            {"|".join(valued)}) ((i++)) ;;
            -*) ;;
            *) if [ -z "$path" ]; then path=$w; elif [ "${{path#* }}" = "$path" ]; then path="$path $w"; fi ;;
        esac
    done
    case $path in
        "") words="{" ".join(_words(parser))}" ;;
{chr(10).join(cases)}
        *) words="" ;;
    esac
    case ${{COMP_WORDS[COMP_CWORD-1]}} in
        {"|".join(valued)}) COMPREPLY=(); compopt -o default 2>/dev/null; return 0 ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _{prog} {prog}
"""
