"""The research pipeline end to end with the real Agents SDK (Runner.run) and the offline model."""

from __future__ import annotations

import agents
import pytest
from conftest import new_run_id

from tidebase.demo.offline_model import OfflineModel
from tidebase.demo.pipeline import WORKFLOW, TicketSystem, build_pipeline, offline_models


@pytest.fixture(autouse=True)
def no_openai_trace_export():
    agents.set_trace_processors([])
    yield


class Killed(BaseException):
    """Stands in for the process dying inside the writer's agent run."""


async def test_crash_inside_agent_run_resumes_without_rerunning_or_rebilling(tide, tmp_path):
    run_id = new_run_id()
    tickets = TicketSystem(tmp_path / "tickets.jsonl")

    def crash_after_ticket(run, ticket):
        if run.attempt == 1:
            raise Killed()

    first = offline_models()
    with pytest.raises(Killed):
        await tide.run(
            WORKFLOW,
            build_pipeline(first, tickets, crash_after_ticket),
            run_id=run_id,
            input={"topic": "checkpoints"},
        )
    assert first.researcher.calls == 1
    assert len(tickets.tickets()) == 1

    second = offline_models()
    post = await tide.run(
        WORKFLOW, build_pipeline(second, tickets), run_id=run_id, input={"topic": "checkpoints"}
    )
    assert post.startswith("# Why your agents need checkpoints")
    assert second.researcher.calls == 0  # research replayed: the researcher was not called
    assert second.writer.calls == 2  # the writer re-ran (it never completed)
    assert len(tickets.tickets()) == 1  # the tool's inner step replayed: no second ticket

    detail = await tide.get_run(run_id)
    steps = {s["name"]: s for s in detail["steps"]}
    assert steps["research"]["run_attempt"] == 1
    assert steps["create_ticket"]["run_attempt"] == 1
    assert steps["create_ticket"]["parent_name"] == "draft"
    assert steps["draft"]["run_attempt"] == 2
    usage = detail["usage"]
    assert sorted(u["step_name"] for u in usage) == ["draft", "research"]
    research_usage = next(u for u in usage if u["step_name"] == "research")
    assert research_usage["input_tokens"] > 0 and research_usage["output_tokens"] > 0


async def test_run_result_round_trip_through_a_step(tide):
    """A replayed RunResult answers .final_output and usage exactly as the live one did."""
    run_id = new_run_id()
    model = OfflineModel(["The answer is 42."])
    agent = agents.Agent(name="solver", model=model)
    live = {}

    async def pipeline(run, _):
        result = await run.step("solve", lambda: agents.Runner.run(agent, "question"))
        live.setdefault("result", result)
        if run.attempt == 1:
            raise RuntimeError("crash after the step")
        return result

    with pytest.raises(RuntimeError):
        await tide.run("wf", pipeline, run_id=run_id)
    replayed = await tide.run("wf", pipeline, run_id=run_id)
    original = live["result"]
    assert model.calls == 1
    assert getattr(replayed, "replayed", False)
    assert replayed.final_output == original.final_output == "The answer is 42."
    a, b = replayed.context_wrapper.usage, original.context_wrapper.usage
    assert (a.requests, a.input_tokens, a.output_tokens, a.total_tokens) == (
        b.requests,
        b.input_tokens,
        b.output_tokens,
        b.total_tokens,
    )


async def test_parked_tool_step_stops_the_agent_step_even_if_the_sdk_swallows_errors(tide):
    """The Agents SDK reports a raising tool to the model and carries on; Tidebase must not let
    the enclosing agent step complete past a tool step that is parked in manual review."""
    from tidebase import StepNeedsReview
    from tidebase.demo.offline_model import ToolCall, last_item_is_tool_output

    run_id = new_run_id()
    attempts = []

    def write(request):
        if not last_item_is_tool_output(request):
            return ToolCall("create_ticket", {"title": "t"})
        return "Post written (the ticket tool failed)."

    model = OfflineModel(write)

    async def pipeline(run, _):
        @agents.function_tool
        async def create_ticket(title: str) -> str:
            """File a ticket."""

            def flaky_write():
                attempts.append(title)
                if len(attempts) == 1:
                    raise TimeoutError("ticket API timed out: created or not?")
                return {"id": "T-2"}

            ticket = await run.step("ticket", flaky_write, side_effects=["tickets.create"])
            return ticket["id"]

        writer = agents.Agent(name="writer", model=model, tools=[create_ticket])
        result = await run.step("draft", lambda: agents.Runner.run(writer, "go"))
        return result.final_output

    with pytest.raises(StepNeedsReview, match="'ticket'"):
        await tide.run("wf", pipeline, run_id=run_id)
    detail = await tide.get_run(run_id)
    assert {s["name"]: s["status"] for s in detail["steps"]} == {"ticket": "manual_review"}
    assert detail["run"]["failure_class"] == "manual_review"

    calls_before = model.calls
    with pytest.raises(StepNeedsReview):
        await tide.run("wf", pipeline, run_id=run_id)
    assert model.calls == calls_before  # the agent was not run (or billed) again
    assert len(attempts) == 1

    await (await tide.store()).resolve_step(run_id, "ticket", output={"id": "T-1"})
    assert await tide.run("wf", pipeline, run_id=run_id) == "Post written (the ticket tool failed)."
    assert len(attempts) == 1  # the resolved output replayed; the write never ran again


async def test_a_tool_reusing_a_step_name_fails_the_agent_step_loudly(tide):
    """The model calls a tool twice; the tool uses a fixed step name. The Agents SDK would
    report the DuplicateStep to the model and carry on, silently skipping the second write."""
    from tidebase import DuplicateStep
    from tidebase.demo.offline_model import ToolCall, last_item_is_tool_output

    def twice(request):
        if not last_item_is_tool_output(request):
            return [ToolCall("send_email", {"to": "a"}), ToolCall("send_email", {"to": "b"})]
        return "sent"

    sent = []

    async def pipeline(run, _):
        @agents.function_tool
        async def send_email(to: str) -> str:
            """Send an email."""
            await run.step(
                "send_email",
                lambda: sent.append(to),
                idempotency_key=to,
                side_effects=["email.send"],
            )
            return "ok"

        agent = agents.Agent(name="mailer", model=OfflineModel(twice), tools=[send_email])
        return (await run.step("mail", lambda: agents.Runner.run(agent, "go"))).final_output

    with pytest.raises(DuplicateStep, match="send_email"):
        await tide.run("wf", pipeline)
    assert len(sent) == 1
