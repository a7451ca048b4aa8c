"""The research pipeline of the design: a researcher agent, a writer agent, a ticket tool.

Each `Runner.run` is a step; the writer's `create_ticket` tool wraps its side effect in its own
step with an idempotency key, so a crash inside the writer's run re-executes the writer but
never files the ticket twice. Without OPENAI_API_KEY the agents use the scripted offline model.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import Agent, Runner, function_tool

from tidebase.aio import RunContext

WORKFLOW = "research-pipeline"
OFFLINE_MODEL = "offline-scripted"
LIVE_MODEL = "gpt-4.1-mini"

# Illustrative prices for the *offline* model only, so the demo can show cost figures.
# Tidebase ships no prices for real models: configure your own (see the README).
DEMO_PRICES_PER_MILLION = {OFFLINE_MODEL: (1.00, 4.00)}


class TicketSystem:
    """A stand-in for an external system with side effects: one JSON line per ticket created."""

    def __init__(self, path: Path):
        self.path = path

    def create(self, title: str, idempotency_key: str) -> dict[str, Any]:
        ticket = {
            "id": f"TCK-{uuid.uuid4().hex[:6].upper()}",
            "title": title,
            "key": idempotency_key,
            "created_at": time.time(),
        }
        with self.path.open("a") as f:
            f.write(json.dumps(ticket) + "\n")
        return ticket

    def tickets(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


@dataclass
class Models:
    """The models the agents use, and whether they are the offline scripted ones."""

    researcher: Any
    writer: Any
    offline: bool


def offline_models() -> Models:
    from tidebase.demo.offline_model import OfflineModel, ToolCall, last_item_is_tool_output

    def research(request: Any) -> Any:
        topic = str(request.input[0].get("content", "")) if request.input else ""
        return (
            f"Findings for {topic.removeprefix('Research: ')}:\n"
            "1. Durable execution records each step's output so a crash resumes, not restarts.\n"
            "2. Re-running finished LLM calls costs money and can change answers.\n"
            "3. Side effects (tickets, emails) need idempotency keys or human review."
        )

    def write(request: Any) -> Any:
        if not last_item_is_tool_output(request):
            return ToolCall("create_ticket", {"title": "Publish: why agents need checkpoints"})
        return (
            "# Why your agents need checkpoints\n\n"
            "Agent pipelines fail halfway: a timeout, a deploy, an OOM kill. Without checkpoints "
            "every retry re-runs (and re-bills) the research that already succeeded. With them, "
            "finished steps replay from Postgres and only the unfinished work runs again. "
            "(Publishing ticket filed.)"
        )

    return Models(
        researcher=OfflineModel(research, model=OFFLINE_MODEL),
        writer=OfflineModel(write, model=OFFLINE_MODEL),
        offline=True,
    )


def choose_models() -> Models:
    """Live OpenAI models with OPENAI_API_KEY, else the scripted offline ones.

    Offline, the Agents SDK's default exporter (which uploads traces to OpenAI) is switched
    off: there is no key to upload with. Other trace processors are left in place.
    """
    if os.environ.get("OPENAI_API_KEY"):
        return Models(researcher=LIVE_MODEL, writer=LIVE_MODEL, offline=False)
    _drop_openai_trace_exporter()
    return offline_models()


def _drop_openai_trace_exporter() -> None:
    from agents.tracing import get_trace_provider, set_trace_processors
    from agents.tracing.processors import BatchTraceProcessor, default_processor

    provider = get_trace_provider()
    processors = list(getattr(getattr(provider, "_multi_processor", None), "_processors", ()))
    default = default_processor()
    kept = [p for p in processors if p is not default and not isinstance(p, BatchTraceProcessor)]
    if len(kept) != len(processors):
        set_trace_processors(kept)


def _model_name(model: Any) -> str:
    return model if isinstance(model, str) else getattr(model, "model", "unknown")


def _cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    prices = DEMO_PRICES_PER_MILLION.get(model)
    if prices is None:
        return None
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1_000_000


async def record_agent_usage(run: RunContext, result: Any, model: str) -> None:
    """Writes a Runner.run's token usage to the run's ledger (inside the calling step)."""
    usage = result.context_wrapper.usage
    await run.usage_record(
        kind="llm",
        provider="openai",
        model=model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=_cost(model, usage.input_tokens, usage.output_tokens),
        metadata={"requests": usage.requests},
    )


def build_pipeline(models: Models, tickets: TicketSystem, on_ticket: Any = None) -> Any:
    """Returns the workflow function `pipeline(run, input)` of DESIGN.md §2."""
    researcher = Agent(
        name="researcher",
        instructions="Research the topic and list the key findings.",
        model=models.researcher,
    )

    async def pipeline(run: RunContext, input: dict[str, Any]) -> str:
        @function_tool
        async def create_ticket(title: str) -> str:
            """File a ticket asking the editors to publish the post."""
            key = f"{run.run_id}:publish"
            ticket = await run.step(
                "create_ticket",
                lambda: tickets.create(title, key),
                input={"title": title},
                side_effects=["tickets.create"],
                idempotency_key=key,
            )
            if on_ticket is not None:
                on_ticket(run, ticket)
            return f"Created ticket {ticket['id']}"

        writer = Agent(
            name="writer",
            instructions="Write a short blog post from the findings, then file a publish ticket.",
            model=models.writer,
            tools=[create_ticket],
        )

        async def research() -> Any:
            result = await Runner.run(researcher, f"Research: {input['topic']}")
            await record_agent_usage(run, result, _model_name(models.researcher))
            return result

        findings = await run.step("research", research, input={"topic": input["topic"]})

        async def draft() -> Any:
            result = await Runner.run(writer, f"Write a post from:\n{findings.final_output}")
            await record_agent_usage(run, result, _model_name(models.writer))
            return result

        post = await run.step("draft", draft, input={"findings": findings.final_output})
        await run.state_set({"phase": "done", "words": len(post.final_output.split())})
        return post.final_output

    return pipeline
