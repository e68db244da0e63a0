"""Structured outputs through the official `openai` package, unchanged:

1. `client.chat.completions.parse(...)` with a Pydantic model (nested objects, an enum,
   arrays, optional fields), temperature 0.8, max_tokens 400: RUNS seeded runs, each a
   valid object with finish_reason "stop";
2. `response_format={"type": "json_object"}`: the content always parses as an object;
3. `guided_choice` and `guided_regex` (extra_body): the output is one of the choices, or
   matches the regex;
4. tool calls: with `tool_choice="required"` the arguments validate against the
   function's schema, streamed and not; a named function is called; a `tool` result
   goes back for the next turn.

Usage: structured_outputs.py BASE_URL MODEL [RUNS]

Prints a summary line per check and "all checks passed"; exits non-zero (with the
reason and the failing output) on the first thing that is wrong.
"""
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Annotated, Optional

import openai
from pydantic import BaseModel, Field

from openai_client import check


class Role(str, Enum):
    admin = "admin"
    user = "user"
    guest = "guest"


# Bounded strings and lists, as a schema for a small model should be: the grammar then
# closes a runaway string or list instead of letting it run to max_tokens.
class Address(BaseModel):
    city: str = Field(max_length=40)
    zip_code: Optional[str] = Field(default=None, max_length=10)


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=150)
    role: Role
    tags: list[Annotated[str, Field(max_length=20)]] = Field(max_length=4)
    address: Address
    nickname: Optional[str] = Field(default=None, max_length=20)


class Unit(str, Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Weather(BaseModel):
    city: str = Field(max_length=40)
    unit: Unit


def check_call(name, arguments, what):
    args = json.loads(arguments)
    if name == "get_weather":
        Weather.model_validate(args)
    else:
        check(name == "send_email" and set(args) == {"to"} and isinstance(args["to"], str), f"{what}: {name} {arguments}")


PROMPT = (
    "Invent a customer of a web shop. Give their name, age, role (admin, user or guest), "
    "a few tags, their address (city and zip code) and a nickname if they have one."
)


def parse_once(client, model, seed):
    completion = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        response_format=Person,
        temperature=0.8,
        max_tokens=400,
        seed=seed,
    )
    choice = completion.choices[0]
    return seed, choice.finish_reason, choice.message.parsed, choice.message.content, completion.usage.completion_tokens


def check_tools(client, model, native):
    """Tool calls: with tool_choice "required" the call's arguments fit the function's
    schema, streamed (deltas accumulated as OpenAI's clients do) and not. `native`: the
    deployment's template has its own tool format (Hermes), where a reply may hold text
    and calls together."""
    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                          "parameters": Weather.model_json_schema()}},
        {"type": "function", "function": {"name": "send_email", "description": "Send an email",
                                          "parameters": {"type": "object", "properties": {"to": {"type": "string", "maxLength": 40}},
                                                         "required": ["to"], "additionalProperties": False}}},
    ]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    # SmolLM2 was never trained on the Hermes format: free to add calls, it repeats them
    # until max_tokens, so the native run asks for one call.
    one = {"parallel_tool_calls": False} if native else {}
    for seed in range(10):
        reply = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required",
                                               temperature=0.8, max_tokens=200, seed=seed, **one)
        choice = reply.choices[0]
        check(choice.finish_reason == "tool_calls", f"required seed {seed}: {choice.finish_reason}: {choice.message}")
        check(choice.message.content is None and choice.message.tool_calls, f"required seed {seed}: {choice.message}")
        for call in choice.message.tool_calls:
            check_call(call.function.name, call.function.arguments, f"required seed {seed}")
        stream = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice="required",
                                                temperature=0.8, max_tokens=200, seed=seed, stream=True, **one)
        calls, finish = {}, None
        for chunk in stream:
            delta = chunk.choices[0].delta
            for part in delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": part.id, "name": "", "arguments": ""})
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        check(finish == "tool_calls" and calls, f"streamed seed {seed}: {finish} {calls}")
        streamed = [(c["name"], json.loads(c["arguments"])) for c in calls.values()]
        plain = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
        check(streamed == plain, f"seed {seed}: streamed calls {streamed} differ from {plain}")
    # A named function is the one called.
    named = client.chat.completions.create(model=model, messages=ask, tools=tools, temperature=0.8, max_tokens=200, seed=1,
                                           tool_choice={"type": "function", "function": {"name": "send_email"}}, **one)
    names = {c.function.name for c in named.choices[0].message.tool_calls or []}
    check(names == {"send_email"}, f"named: {named.choices[0].message}")
    # The call's result goes back as a `tool` message; with "auto" the model may answer.
    call = named.choices[0].message.tool_calls[0]
    follow = client.chat.completions.create(
        model=model, tools=tools, temperature=0.8, max_tokens=200, seed=2,
        messages=ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                        {"role": "tool", "tool_call_id": call.id, "content": "Sent."}])
    message = follow.choices[0].message
    if native:
        check(message.content is not None or bool(message.tool_calls), f"auto: content or calls: {message}")
    else:
        check((message.content is not None) != bool(message.tool_calls), f"auto: content or calls: {message}")
    print(f"tools{' (native format)' if native else ''}: 10/10 required calls fit their schema, streamed and not; "
          "named and auto turns well formed")


def main():
    base_url, model = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    if len(sys.argv) > 4 and sys.argv[4] == "native-tools":
        # Only tool calls, on a deployment whose template has its own tool format.
        check_tools(client, model, native=True)
        print("all checks passed")
        return

    # 1. parse() with a Pydantic model, seeded runs at temperature 0.8, 16 at a time.
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda seed: parse_once(client, model, seed), range(runs)))
    tokens = []
    for seed, finish, parsed, content, used in results:
        check(finish == "stop", f"seed {seed}: finish_reason {finish}: {content!r}")
        check(isinstance(parsed, Person), f"seed {seed}: parsed {parsed!r} from {content!r}")
        check(Person.model_validate_json(content) == parsed, f"seed {seed}: content and parsed differ")
        tokens.append(used)
    distinct = len({content for _, _, _, content, _ in results})
    print(f"parse: {runs}/{runs} valid Person objects with finish_reason stop; "
          f"{distinct} distinct; completion tokens min {min(tokens)} max {max(tokens)}")
    check(distinct > runs // 2, f"seeds should give different people: {distinct} distinct of {runs}")

    # 2. json_object: a complete output always parses as an object. (Any object fits, so
    # nothing bounds it: one cut by max_tokens ends with finish_reason "length", as
    # OpenAI's does, and is the start of a valid object.)
    complete = 0
    for seed in range(20):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Describe a cat as JSON with its name, colour and age."}],
            response_format={"type": "json_object"},
            temperature=0.8,
            max_tokens=300,
            seed=seed,
        )
        choice = reply.choices[0]
        content = choice.message.content
        if choice.finish_reason == "length":
            check(reply.usage.completion_tokens == 300 and content.startswith("{"), f"json_object seed {seed}: {content!r}")
            continue
        check(choice.finish_reason == "stop", f"json_object seed {seed}: {choice.finish_reason}")
        check(isinstance(json.loads(content), dict), f"json_object seed {seed}: {content!r}")
        complete += 1
    # SmolLM2-135M at temperature 0.8 completes about two thirds (13 of these 20).
    check(complete >= 10, f"only {complete} of 20 json_object outputs completed within 300 tokens")
    print(f"json_object: {complete}/20 complete within max_tokens, every one parses as an object")

    # 3. The guided extensions other engines' clients send.
    choices = ["positive", "negative", "neutral"]
    for seed in range(5):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Is 'I love this phone' positive or negative?"}],
            temperature=1.0,
            max_tokens=10,
            seed=seed,
            extra_body={"guided_choice": choices},
        )
        check(reply.choices[0].message.content in choices, f"guided_choice: {reply.choices[0].message.content!r}")
        text = client.completions.create(
            model=model, prompt="Call me at", max_tokens=20, temperature=1.0, seed=seed,
            extra_body={"guided_regex": r" \+1-[0-9]{3}-[0-9]{4}"},
        ).choices[0].text
        check(re.fullmatch(r" \+1-[0-9]{3}-[0-9]{4}", text) is not None, f"guided_regex: {text!r}")
    print("guided_choice, guided_regex: 5/5 each")

    check_tools(client, model, native=False)

    # A schema llguidance cannot enforce is a 400 naming the field, before any work.
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            extra_body={"guided_regex": "(unclosed"},
        )
        check(False, "a bad regex was accepted")
    except openai.BadRequestError as error:
        check(error.body is not None and error.body.get("param") == "guided_regex", f"error body {error.body}")
    print("all checks passed")


if __name__ == "__main__":
    main()
