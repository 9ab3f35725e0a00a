"""``python -m hub_cards {render,validate,push}``: the command-line face of render_card, validate_folder, push_folder.

Errors print one line on stderr (``error: ...``) and exit with status 2; success prints what was written or the
commit URL on stdout.
"""

from __future__ import annotations

import argparse
import sys

from .errors import HubCardsError


def add_push_arguments(parser: argparse.ArgumentParser, *, flag: str = "--push-to-hub") -> None:
    """Options for a training or evaluation command that pushes its folder (``--push-to-hub`` / ``--push``).

    Prefixed ``--hub-*`` so they cannot clash with a command's own ``--revision`` or ``--token``; pair with
    :func:`check_push_args` (before the work) and :func:`push_from_args` (after it).
    """
    group = parser.add_argument_group("pushing to the Hub")
    group.add_argument(flag, dest="push_repo_id", metavar="ORG/NAME", default=None,
                       help="push the folder (weights, remote code, tokenizer, card, results, images) to this repo")
    group.add_argument("--hub-private", action="store_true", help="create the repository as private (new repos only)")
    group.add_argument("--hub-revision", default=None, help="branch to commit to (created if missing; default main)")
    group.add_argument("--hub-commit-message", default=None, help="commit message")
    group.add_argument("--hub-token", default=None, help="Hub token (default: HF_TOKEN, else the stored login)")
    group.add_argument("--hub-trust-remote-code", action="store_true",
                       help="let the pre-push load check run folder code that hf_sparse_attn did not write")


def check_push_args(args: argparse.Namespace) -> None:
    """Refuse a bad repo id or a missing token before the command's real work starts (PushError, one line)."""
    if not getattr(args, "push_repo_id", None):
        return
    from .push import check_repo_id, resolve_token

    check_repo_id(args.push_repo_id)
    resolve_token(args.hub_token)


def push_from_args(folder, args: argparse.Namespace) -> str | None:
    """push_folder with the options add_push_arguments declared; None when no repository was asked for."""
    if not getattr(args, "push_repo_id", None):
        return None
    from .push import push_folder

    return push_folder(folder, args.push_repo_id, private=args.hub_private, revision=args.hub_revision,
                       commit_message=args.hub_commit_message, token=args.hub_token,
                       trust_remote_code=getattr(args, "hub_trust_remote_code", False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hub_cards", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    render = commands.add_parser("render", help="write CHECKPOINT/README.md from an evaluation's results.json")
    render.add_argument("checkpoint", help="checkpoint folder (save_pretrained output)")
    render.add_argument("--results", default=None,
                        help="results.json written by the evaluation suite (omit for a card from the training files "
                             "alone, whose score sections a later render fills in)")
    render.add_argument("--train-log", default=None, help="train_log.jsonl (default: CHECKPOINT/train_log.jsonl)")
    render.add_argument("--repo-id", default=None, metavar="ORG/NAME",
                        help="Hub repository shown in the loading snippet, checked as push checks it (default: the "
                             "one an earlier render recorded, else the placeholder ORG/NAME)")
    render.add_argument("--base-model", default=None, help="Hub id of the model it was fine-tuned from")
    render.add_argument("--license", default=None, metavar="ID",
                        help="Hub license identifier, e.g. apache-2.0 (default: the card's own, else the license in "
                             "the base model's card when a local copy of it exists)")
    render.add_argument("--gradient-method", default=None,
                        help="importance method the summary tau-b uses (default grad_norm)")

    trust_help = ("let the load check import the folder's code even where it is not byte-identical to the "
                  "remote code hf_sparse_attn writes (read it first: it runs with your files and rights)")
    validate = commands.add_parser("validate", help="run every pre-push check, without the network")
    validate.add_argument("checkpoint")
    validate.add_argument("--trust-remote-code", action="store_true", help=trust_help)

    push = commands.add_parser("push", help="upload the checkpoint, card, results and images in one commit")
    push.add_argument("checkpoint")
    push.add_argument("--repo-id", required=True, metavar="ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repository as private (new repos only)")
    push.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, else the stored login)")
    push.add_argument("--trust-remote-code", action="store_true", help=trust_help)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "render":
            from .render import render_card

            path = render_card(args.checkpoint, args.results, train_log=args.train_log, repo_id=args.repo_id,
                               base_model=args.base_model, gradient_method=args.gradient_method,
                               license=args.license)
            print(path)
        elif args.command == "validate":
            from .push import validate_folder

            for name in validate_folder(args.checkpoint, trust_remote_code=args.trust_remote_code):
                print(name)
        else:
            from .push import push_folder

            print(push_folder(args.checkpoint, args.repo_id, private=args.private, revision=args.revision,
                              commit_message=args.commit_message, token=args.token,
                              trust_remote_code=args.trust_remote_code))
    except HubCardsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
