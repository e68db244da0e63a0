"""The request features an engine may or may not support, through the official `openai`
package: `n`, `stop`, `logprobs`, `seed`, structured outputs (`parse` with a Pydantic
model, `guided_choice`) and a `tool_choice="required"` call through the engine's own
constrained decoding, and a clear 400 (naming the parameter) for what the engine cannot
honour.

Usage: openai_engine_features.py BASE_URL MODEL

Exits non-zero (with the reason) on the first thing that is wrong.
"""
import json
import sys

import openai
from pydantic import BaseModel, Field

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

    # Structured outputs and tool calls: Swell hands the schema to the engine's own
    # constrained decoding (llama-server: json_schema, or a GBNF grammar for a choice).
    class City(BaseModel):
        name: str = Field(max_length=30)
        country: str = Field(max_length=30)
        population: int = Field(ge=0)

    for seed in range(3):
        city = client.chat.completions.parse(model=model, messages=[{"role": "user", "content": "Describe Paris."}],
                                             response_format=City, temperature=0.8, max_tokens=200, seed=seed)
        check(city.choices[0].finish_reason == "stop", f"parse seed {seed}: {city.choices[0]}")
        check(isinstance(city.choices[0].message.parsed, City), f"parse seed {seed}: {city.choices[0].message}")
    picked = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Yes or no?"}], max_tokens=5,
                                            temperature=1.0, seed=4, extra_body={"guided_choice": ["yes", "no"]})
    check(picked.choices[0].message.content in ("yes", "no"), f"guided_choice: {picked.choices[0].message.content!r}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"], "additionalProperties": False}}}]
    called = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Rome?"}], tools=tools,
                                            tool_choice="required", temperature=0.8, max_tokens=100, seed=5)
    check(called.choices[0].finish_reason == "tool_calls", f"tools: {called.choices[0]}")
    args = json.loads(called.choices[0].message.tool_calls[0].function.arguments)
    check(set(args) == {"city"} and isinstance(args["city"], str), f"tool arguments {args}")
    try:
        client.chat.completions.create(model=model, messages=messages, max_tokens=2, extra_body={"guided_regex": "[0-9]+"})
        check(False, "guided_regex was accepted by a llama-server deployment")
    except openai.BadRequestError as error:
        check(error.body is not None and error.body.get("param") == "guided_regex", f"error body {error.body}")

    print("engine features: all checks passed")


if __name__ == "__main__":
    main()
