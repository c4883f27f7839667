"""Shell completion for `relay`, generated from its argument parser: so it never lists a
command or an option the CLI does not have.

    eval "$(relay completion bash)"      # or: relay completion bash > /etc/bash_completion.d/relay
    eval "$(relay completion zsh)"       # zsh, through its bash completion support

Completes the commands and sub-commands, then the options of the command typed so far.
"""

from __future__ import annotations

import argparse

BASH = """# bash completion for relay (relay completion bash)
_relay_complete() {
    local cur words path
    cur="${COMP_WORDS[COMP_CWORD]}"
    path=""
    for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
        case "$word" in -*) ;; *) path="${path:+$path }$word" ;; esac
    done
    case "$path" in
%(cases)s
        *) words="" ;;
    esac
    COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}
complete -F _relay_complete relay
"""

ZSH_PREAMBLE = "autoload -U +X bashcompinit && bashcompinit\n"


def _commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """Each command path ("", "dlq", "dlq retry") → what may follow it."""
    found: dict[str, list[str]] = {}
    words = [opt for action in parser._actions for opt in action.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                found.update(_commands(child, f"{path} {name}".strip()))
        elif action.choices and not action.option_strings:  # a positional with choices
            words += [str(choice) for choice in action.choices]
    found[path] = sorted(set(words))
    return found


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;'
        for path, words in sorted(_commands(parser).items(), key=lambda item: -len(item[0]))
    )
    text = BASH % {"cases": cases}
    return ZSH_PREAMBLE + text if shell == "zsh" else text
