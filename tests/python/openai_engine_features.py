"""The request features an engine may or may not support, through the official `openai`
package: `n`, `stop`, `logprobs`, `seed`, and a clear 400 (naming the parameter) for one
the engine cannot honour.

Usage: openai_engine_features.py BASE_URL MODEL

Exits non-zero (with the reason) on the first thing that is wrong.
"""
import sys

import openai

from openai_client import check


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Write a list of colours"}]

    # n: independent choices, each with its own finish_reason; usage counts them all.
    many = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=1.0, seed=3, n=3)
    check(len(many.choices) == 3, f"n=3 gave {len(many.choices)} choices")
    check(sorted(c.index for c in many.choices) == [0, 1, 2], "choice indices")
    check(all(c.finish_reason in ("stop", "length") for c in many.choices), "finish reasons")

    # seed: the same seed gives the same text at temperature > 0.
    a = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0.9, seed=11)
    b = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0.9, seed=11)
    check(a.choices[0].message.content == b.choices[0].message.content, f"seed 11 twice: {a.choices[0].message.content!r} vs {b.choices[0].message.content!r}")

    # stop: generation ends before the stop string, which never shows.
    free = client.completions.create(model=model, prompt="One, two, three, four, five,", max_tokens=16, temperature=0)
    text = free.choices[0].text
    check("," in text, f"the test needs a comma in the free run: {text!r}")
    cut = client.completions.create(model=model, prompt="One, two, three, four, five,", max_tokens=16, temperature=0, stop=[","])
    check(cut.choices[0].finish_reason == "stop", f"stop finish {cut.choices[0].finish_reason}")
    check(cut.choices[0].text == text[: text.index(",")], f"stopped text {cut.choices[0].text!r} from {text!r}")

    # logprobs: completions (top 2) and chat (top_logprobs 2), one entry per token.
    scored = client.completions.create(model=model, prompt="The sky is", max_tokens=4, temperature=0, logprobs=2)
    lp = scored.choices[0].logprobs
    check(len(lp.tokens) == scored.usage.completion_tokens, f"{len(lp.tokens)} logprobs for {scored.usage.completion_tokens} tokens")
    check("".join(lp.tokens) == scored.choices[0].text, f"tokens {lp.tokens} vs text {scored.choices[0].text!r}")
    check(all(v <= 0 for v in lp.token_logprobs), f"logprobs {lp.token_logprobs}")
    check(all(len(t) == 2 for t in lp.top_logprobs), f"top {lp.top_logprobs}")
    # Greedy: the chosen token is the most likely one.
    check(all(abs(max(t.values()) - v) < 1e-3 for t, v in zip(lp.top_logprobs, lp.token_logprobs)), "greedy picks the top token")
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    check(len(content) == chat.usage.completion_tokens, f"chat logprobs {len(content)}")
    check(all(len(c.top_logprobs) == 2 for c in content), "chat top_logprobs")

    # A feature this engine cannot honour: 400, naming the parameter.
    try:
        client.completions.create(model=model, prompt="The sky is", max_tokens=2, echo=True, logprobs=1)
        check(False, "echo with logprobs was accepted")
    except openai.BadRequestError as error:
        check(error.body is not None and error.body.get("param") == "echo", f"error body {error.body}")

    print("engine features: all checks passed")


if __name__ == "__main__":
    main()
