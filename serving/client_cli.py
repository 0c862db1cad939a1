"""`adapter-client`: the terminal client of adapter-serve.

    adapter-client predict --task vqa --adapter vqa-lora@prod --image cat.jpg --text "what?"
    adapter-client predict --task caption --adapter cap --image cat.jpg --stream
    adapter-client predict --task tvqa --adapter tv --frames clip/ --text "who?" \\
        --choice a --choice b --choice c --choice d --choice e --json
    adapter-client --token-file token.txt load vqa-lora:3
    adapter-client index

Exit status: 0 done, 1 the server answered with an error (one line on stderr, e.g.
`adapter-client: error: NOT_FOUND: ...`), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from modeling.cli_parser import OneLineParser
from serving.client import Client, parse_adapter_spec, predict_request
from serving.security import channel_credentials, read_token_file

TASKS = ("vqa", "gqa", "nlvr2", "caption", "tvqa", "how2qa", "tvc", "yc2c")
VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _add_predict(commands: argparse._SubParsersAction, json_flag: argparse.ArgumentParser
                 ) -> None:
    """The `predict` subcommand."""
    predict = commands.add_parser("predict", parents=[json_flag], help="run one request")
    predict.add_argument("--task", required=True, choices=TASKS)
    predict.add_argument("--adapter", required=True, metavar="NAME[@ALIAS|:VERSION]")
    predict.add_argument("--image", action="append", default=[], metavar="PATH",
                         help="image file (twice for nlvr2)")
    predict.add_argument("--frames", metavar="DIR",
                         help="folder of video frames (.jpg/.png/.webp, in name order)")
    predict.add_argument("--text", default="", help="question or statement")
    predict.add_argument("--choice", action="append", default=[],
                         help="one answer candidate (tvqa, how2qa); repeat")
    predict.add_argument("--subtitles", default="")
    predict.add_argument("--max-new-tokens", type=int, metavar="N")
    predict.add_argument("--beams", type=int, metavar="N")
    predict.add_argument("--stream", action="store_true",
                         help="print the answer as it is decoded (PredictStream)")
    predict.set_defaults(command_parser=predict)


def build_parser() -> argparse.ArgumentParser:
    """The command line: global connection options, then one subcommand."""
    parser = OneLineParser(prog="adapter-client", description="Send requests to adapter-serve.")
    parser.add_argument("--target", default="localhost:50051", help="server host:port")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="bearer token")
    token.add_argument("--token-file", metavar="PATH", help="file holding the bearer token")
    parser.add_argument("--tls-ca", metavar="PATH",
                        help="CA certificate of the server: use TLS (default: plaintext)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    json_flag = argparse.ArgumentParser(add_help=False)  # a parent: only its arguments
    json_flag.add_argument("--json", action="store_true", help="print the response as JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(commands, json_flag)
    load = commands.add_parser("load", parents=[json_flag], help="load an adapter")
    load.add_argument("adapter", metavar="NAME[@ALIAS|:VERSION]")
    load.set_defaults(command_parser=load)
    for name, doc in (("unload", "unload an adapter"), ("pin", "keep an adapter resident"),
                      ("unpin", "let an adapter be evicted")):
        commands.add_parser(name, parents=[json_flag], help=doc).add_argument("name")
    commands.add_parser("index", parents=[json_flag], help="every adapter the server knows")
    commands.add_parser("status", parents=[json_flag],
                        help="state of loaded adapters").add_argument("name", nargs="?",
                                                                      default="")
    return parser


def _frames(folder: str, parser: argparse.ArgumentParser) -> list[Path]:
    """The frame files of `folder`, in name order; a usage error when there are none."""
    directory = Path(folder)
    if not directory.is_dir():
        parser.error(f"--frames {folder!r} is not a folder")
    frames = sorted(p for p in directory.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not frames:
        parser.error(f"--frames {folder!r} holds no .jpg/.png/.webp frame")
    return frames


def _predict(client: Client, args: argparse.Namespace, parser: argparse.ArgumentParser
             ) -> Message:
    """Build and send the request of `predict`; usage errors before anything is sent."""
    try:
        name, version, alias = parse_adapter_spec(args.adapter)
    except ValueError as error:
        parser.error(str(error))
    for image in args.image:
        if not Path(image).is_file():
            parser.error(f"--image {image!r} is not a file")
    frames = None
    if args.task in VIDEO_TASKS:
        if args.frames is None:
            parser.error(f"--task {args.task} needs --frames DIR")
        frames = _frames(args.frames, parser)
    elif not args.image:
        parser.error(f"--task {args.task} needs --image PATH")
    request = predict_request(
        args.task, name, images=[Path(image) for image in args.image], frames=frames,
        subtitles=args.subtitles, text=args.text, choices=args.choice, version=version,
        alias=alias, max_new_tokens=args.max_new_tokens, num_beams=args.beams)
    if not args.stream:
        return client.predict(request)
    response = None
    for chunk in client.stream(request):
        if chunk.token_text and not args.json:
            print(chunk.token_text, end="", flush=True)
        if chunk.done:
            response = chunk.response
    return response


def _describe(adapters: Sequence[Message]) -> str:
    """One line per `AdapterState`: name, version, state, tier, pin, aliases."""
    lines = []
    for adapter in adapters:
        line = f"{adapter.name}\tv{adapter.version}\t{adapter.state}\t{adapter.tier or '-'}"
        line += "\tpinned" if adapter.pinned else "\t-"
        line += "\t" + (",".join(adapter.aliases) or "-")
        if adapter.reason:
            line += f"\t({adapter.reason})"
        lines.append(line)
    return "\n".join(lines) if lines else "(no adapters)"


def _run(client: Client, args: argparse.Namespace) -> tuple[Message, str]:
    """Run the subcommand: its response and the text that tells it without --json."""
    if args.command == "predict":
        response = _predict(client, args, args.command_parser)
        return response, "" if args.stream else response.text  # streamed: already printed
    if args.command == "load":
        try:
            name, version, alias = parse_adapter_spec(args.adapter)
        except ValueError as error:
            args.command_parser.error(str(error))
        response = client.load(name, version=version, alias=alias)
        return response, _describe([response.adapter])
    if args.command == "unload":
        return client.unload(args.name), f"unloaded {args.name}"
    if args.command in ("pin", "unpin"):
        response = getattr(client, args.command)(args.name)
        return response, _describe([response.adapter])
    response = client.index() if args.command == "index" else client.status(args.name)
    return response, _describe(response.adapters)


def _connect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Client:
    """A client from the global options; unreadable token or CA files are usage errors."""
    token = args.token
    try:
        if args.token_file is not None:
            tokens = read_token_file(args.token_file)
            if len(tokens) != 1:
                parser.error(f"--token-file {args.token_file!r} must hold exactly one token")
            token = tokens.pop()
        credentials = channel_credentials(args.tls_ca) if args.tls_ca is not None else None
    except ValueError as error:
        parser.error(str(error))
    return Client(args.target, token=token, credentials=credentials, timeout=args.timeout)


def main(argv: list[str] | None = None) -> int:
    """Run `adapter-client`; the exit status (0 done, 1 server error, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        client = _connect(args, parser)
        with client:
            response, text = _run(client, args)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except grpc.RpcError as error:
        code = error.code().name if error.code() is not None else "UNKNOWN"
        details = " ".join((error.details() or "").split())
        print(f"adapter-client: error: {code}: {details}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True), indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
