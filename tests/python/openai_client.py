"""Drives a running `swell serve` with the official `openai` Python package, unchanged.

Usage: openai_client.py BASE_URL MODEL [API_KEY]

Lists models, then runs chat and text completions, each streaming and not, and checks
what comes back, and that a parameter Swell does not honour is refused by name. Exits non-zero (with the reason) on the first thing that is wrong.
"""
import sys

import openai


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    api_key = sys.argv[3] if len(sys.argv) > 3 else "unused"
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)

    models = [m.id for m in client.models.list()]
    check(model in models, f"model {model!r} not listed in {models}")

    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello to the world"}],
        max_tokens=12,
        temperature=0,
        seed=7,
    )
    check(chat.object == "chat.completion", f"object {chat.object}")
    choice = chat.choices[0]
    check(choice.message.role == "assistant", f"role {choice.message.role}")
    check(len(choice.message.content) > 0, "empty chat content")
    check(choice.finish_reason in ("stop", "length"), f"finish_reason {choice.finish_reason}")
    check(chat.usage.completion_tokens > 0, f"usage {chat.usage}")
    check(chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens, "usage sum")

    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello to the world"}],
        max_tokens=12,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object}")
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    streamed = "".join(pieces)
    check(streamed == choice.message.content, f"streamed {streamed!r} != non-streamed {choice.message.content!r} (same seed)")
    check(finish == choice.finish_reason, f"stream finish {finish}")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, f"stream usage {usage}")

    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0)
    check(completion.object == "text_completion", f"object {completion.object}")
    check(len(completion.choices[0].text) > 0, "empty completion text")
    check(completion.usage.completion_tokens == 8 or completion.choices[0].finish_reason == "stop", f"usage {completion.usage}")

    text = []
    for chunk in client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True):
        for c in chunk.choices:
            text.append(c.text)
    check("".join(text) == completion.choices[0].text, f"streamed completion {''.join(text)!r} != {completion.choices[0].text!r}")

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        check(False, "unknown model was accepted")
    except openai.NotFoundError as error:
        check(error.body is not None and "model" in str(error.body).lower(), f"error body {error.body}")

    # A parameter Swell does not honour is refused by name, not ignored.
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, logit_bias={"42": -100}
        )
        check(False, "logit_bias was accepted")
    except openai.BadRequestError as error:
        check(error.code == "unsupported_parameter" and error.param == "logit_bias", f"logit_bias error {error.body}")
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, extra_body={"min_q": 1}
        )
        check(False, "an unknown argument was accepted")
    except openai.BadRequestError as error:
        check("Unrecognized request argument supplied: min_q" in str(error), f"unknown argument error {error.body}")

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
