#!/usr/bin/env python3
"""Push jobs into Swell's Redis ingress stream and print the completions.

A producer that is not Swell: it writes wire-format v1 entries (docs/ingress.md) with
redis-py, then reads its own reply stream until every job has its terminal reply.

    python examples/python/ingress_producer.py --redis redis://127.0.0.1:6379 \\
        --api-key sk-swell-... --tenant acme --deployment default -n 4 "Tell me a joke"

Replies go to a stream under the tenant's reply prefix (by default
`swell-replies:<len>:<tenant>:`); Swell does not answer at any other `reply_to`.

Exit status 0 when every job completed, 1 otherwise (each failure is printed with its
error code). The last line is `completed K/N`.
"""

import argparse
import json
import sys
import time
import uuid

import redis


def ingress_stream(prefix: str) -> str:
    return f"{prefix}:{{ingress}}:requests"


def default_reply_prefix(prefix: str, tenant: str) -> str:
    """Where a tenant without a configured reply prefix gets its replies."""
    return f"{prefix}-replies:{len(tenant.encode())}:{tenant}:"


def make_body(kind: str, prompt: str, max_tokens: int, stream: bool) -> dict:
    body = {"max_tokens": max_tokens, "stream": stream}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def submit(r: redis.Redis, stream: str, *, job_id: str, api_key: str | None, deployment: str, kind: str,
           body: dict, reply_to: str, deadline_ms: int | None) -> str:
    fields = {
        "v": "1",
        "id": job_id,
        "deployment": deployment,
        "kind": kind,
        "request": json.dumps(body),
        "reply_to": reply_to,
    }
    if api_key:
        fields["api_key"] = api_key
    if deadline_ms is not None:
        fields["deadline_ms"] = str(deadline_ms)
    return r.xadd(stream, fields)


def collect(r: redis.Redis, reply_to: str, ids: set[str], timeout: float) -> dict[str, list[dict]]:
    """Reads reply_to from its start until every id has a terminal reply."""
    replies: dict[str, list[dict]] = {job_id: [] for job_id in ids}
    pending = set(ids)
    last = "0"
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no terminal reply for {sorted(pending)} (is {reply_to!r} under the tenant's reply prefix?)")
        read = r.xread({reply_to: last}, count=1000, block=int(min(left, 1.0) * 1000) or 1)
        for _stream, entries in read:
            for entry_id, fields in entries:
                last = entry_id
                reply = {
                    "id": fields["id"],
                    "seq": int(fields["seq"]),
                    "type": fields["type"],
                    "data": json.loads(fields["data"]),
                }
                if reply["id"] in replies:
                    replies[reply["id"]].append(reply)
                    if reply["type"] in ("done", "completion", "error"):
                        pending.discard(reply["id"])
    return replies


def text_of(replies: list[dict]) -> str:
    """The generated text: from the completion body, or the streamed chunks."""
    final = replies[-1]
    if final["type"] == "completion":
        choice = final["data"]["choices"][0]
        return choice["message"]["content"] if "message" in choice else choice["text"]
    parts = []
    for reply in replies:
        if reply["type"] == "chunk":
            for choice in reply["data"]["choices"]:
                parts.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", default="Hello")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--prefix", default="swell", help="Swell's Redis key prefix")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--tenant", default="anonymous", help="the key's tenant (for the default --reply-to)")
    parser.add_argument("--deployment", default="default")
    parser.add_argument("--kind", choices=["chat", "completion"], default="chat")
    parser.add_argument("-n", type=int, default=1, help="number of jobs")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="ask for chunks instead of one completion")
    parser.add_argument("--reply-to", default=None,
                        help="reply stream (default: <prefix>-replies:<len>:<tenant>:{<random>}, under the tenant's "
                             "default reply prefix; a configured one: pass the stream here)")
    parser.add_argument("--deadline-s", type=float, default=None, help="give up after this long (deadline_ms)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    r = redis.Redis.from_url(args.redis, decode_responses=True)
    run = uuid.uuid4().hex[:12]
    reply_to = args.reply_to or f"{default_reply_prefix(args.prefix, args.tenant)}{{{run}}}"
    body = make_body(args.kind, args.prompt, args.max_tokens, args.stream)
    deadline_ms = int((time.time() + args.deadline_s) * 1000) if args.deadline_s else None
    ids = []
    for n in range(args.n):
        job_id = f"{run}-{n}"
        submit(r, ingress_stream(args.prefix), job_id=job_id, api_key=args.api_key, deployment=args.deployment,
               kind=args.kind, body=body, reply_to=reply_to, deadline_ms=deadline_ms)
        ids.append(job_id)

    replies = collect(r, reply_to, set(ids), args.timeout)
    completed = 0
    for job_id in ids:
        mine = replies[job_id]
        seqs = [reply["seq"] for reply in mine]
        assert seqs == list(range(len(mine))), f"{job_id}: replies out of order: {seqs}"
        final = mine[-1]
        if final["type"] == "error":
            error = final["data"]["error"]
            print(f"{job_id}: error {final['data']['status']} {error['code']}: {error['message']}")
            continue
        completed += 1
        print(f"{job_id}: {json.dumps(text_of(mine))}")
    print(f"completed {completed}/{len(ids)}")
    return 0 if completed == len(ids) else 1


if __name__ == "__main__":
    sys.exit(main())
