"""Every attribute, metric, span-name and value string that `tidebase_otel` emits.

The OpenTelemetry GenAI conventions are still in development and names move (for example
`gen_ai.system` became `gen_ai.provider.name`, and the token histogram is being replaced by
per-direction counters). Keeping every string here makes a rename a one-line edit. Names follow
`opentelemetry-semantic-conventions` 0.66b2; the package is deliberately not imported at runtime
because `tidebase_otel` depends on `opentelemetry-api` only.

Rule for the rest of the package: no string literal naming an attribute, metric or span may
appear outside this module.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------------------------
# GenAI attributes (gen_ai.*)
# --------------------------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_FREQUENCY_PENALTY: Final = "gen_ai.request.frequency_penalty"
GEN_AI_REQUEST_PRESENCE_PENALTY: Final = "gen_ai.request.presence_penalty"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"

# Opt-in content attributes (recorded only when content capture is enabled).
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"

# Values of gen_ai.operation.name.
OP_CHAT: Final = "chat"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_EXECUTE_TOOL: Final = "execute_tool"
OP_INVOKE_WORKFLOW: Final = "invoke_workflow"
# Not (yet) in the conventions; used for audio spans of the Agents voice pipeline.
OP_TRANSCRIPTION: Final = "transcription"
OP_SPEECH: Final = "speech"

# Values of gen_ai.provider.name / gen_ai.tool.type / gen_ai.token.type.
PROVIDER_OPENAI: Final = "openai"
TOOL_TYPE_FUNCTION: Final = "function"
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

# Environment variable that opts in to message-content capture.
ENV_CAPTURE_MESSAGE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# --------------------------------------------------------------------------------------------
# General attributes
# --------------------------------------------------------------------------------------------
ERROR_TYPE: Final = "error.type"
ERROR_TYPE_OTHER: Final = "_OTHER"
MCP_METHOD_NAME: Final = "mcp.method.name"
MCP_METHOD_TOOLS_LIST: Final = "tools/list"

# --------------------------------------------------------------------------------------------
# Tidebase run / step attributes (tidebase.*)
# --------------------------------------------------------------------------------------------
TIDEBASE_RUN_ID: Final = "tidebase.run.id"
TIDEBASE_RUN_ATTEMPT: Final = "tidebase.run.attempt"
TIDEBASE_WORKFLOW: Final = "tidebase.workflow"
TIDEBASE_STEP_NAME: Final = "tidebase.step.name"
TIDEBASE_STEP_OUTCOME: Final = "tidebase.step.outcome"
TIDEBASE_STEP_REPLAYED: Final = "tidebase.step.replayed"
TIDEBASE_STEP_INPUT_HASH: Final = "tidebase.step.input_hash"
TIDEBASE_STEP_SIDE_EFFECTS: Final = "tidebase.step.side_effects"
TIDEBASE_STEP_IDEMPOTENCY_KEY: Final = "tidebase.step.idempotency_key"
TIDEBASE_STEP_RESUME_DECISION: Final = "tidebase.step.resume_decision"
TIDEBASE_RUN_STATUS: Final = "tidebase.run.status"
TIDEBASE_STEP_PARENT: Final = "tidebase.step.parent"  # name of the enclosing step, if nested
TIDEBASE_STEP_REPLAY_MODE: Final = "tidebase.step.replay_mode"  # the step's `replay=` option
TIDEBASE_STEP_MAX_RETRIES: Final = "tidebase.step.max_retries"  # the step's `retries=` option
TIDEBASE_STEP_TRIES: Final = "tidebase.step.tries"  # calls of the step function this attempt
TIDEBASE_STEP_TRY: Final = "tidebase.step.try"  # on an exception event: which try raised
TIDEBASE_STEP_WILL_RETRY: Final = "tidebase.step.will_retry"  # on an exception event
# On a replayed step span: the usage recorded when the step really executed.
TIDEBASE_REPLAY_INPUT_TOKENS_AVOIDED: Final = "tidebase.replay.input_tokens_avoided"
TIDEBASE_REPLAY_OUTPUT_TOKENS_AVOIDED: Final = "tidebase.replay.output_tokens_avoided"
TIDEBASE_REPLAY_COST_AVOIDED_USD: Final = "tidebase.replay.cost_avoided_usd"
# On links: why the link exists.
TIDEBASE_LINK_TYPE: Final = "tidebase.link.type"
LINK_EXECUTED_BY: Final = "executed_by"  # replayed step -> span that executed it
LINK_PREVIOUS_ATTEMPT: Final = "previous_attempt"  # run span -> previous attempt's run span
# Metric attribute: the usage record's kind (llm, embedding, search, ...; set in code).
TIDEBASE_USAGE_KIND: Final = "tidebase.usage.kind"

# Values of tidebase.step.outcome that tidebase itself does not report through a tracker.
OUTCOME_COMPLETED: Final = "completed"
OUTCOME_REPLAYED: Final = "replayed"
OUTCOME_RETRIED: Final = "retried"  # metric only: a try failed and the step is tried again
OUTCOME_INTERRUPTED: Final = "interrupted"  # the attempt ended while the step was running
OUTCOME_MANUAL_REVIEW: Final = "manual_review"
OUTCOME_FAILED: Final = "failed"
RESUME_MANUAL_REVIEW: Final = "manual_review"
RESUME_FAIL_HARD: Final = "fail_hard"
# Run statuses that are not failures (anything else ends the run span with ERROR status).
RUN_STATUSES_OK: Final = frozenset(("completed", "already_completed"))

# --------------------------------------------------------------------------------------------
# Agents SDK attributes without a GenAI convention (tidebase.agents.*)
# --------------------------------------------------------------------------------------------
# Set on the OTel span that was current when an Agents trace began (the step span), and on the
# root spans of that trace, so a step links to the Agents trace it ran.
TIDEBASE_AGENTS_TRACE_ID: Final = "tidebase.agents.trace_id"
TIDEBASE_AGENTS_WORKFLOW_NAME: Final = "tidebase.agents.workflow_name"
TIDEBASE_AGENTS_SPAN_ID: Final = "tidebase.agents.span_id"  # Agents span id, on every span
TIDEBASE_AGENTS_SPAN_TYPE: Final = "tidebase.agents.span_type"
TIDEBASE_AGENTS_TOOLS: Final = "tidebase.agents.agent.tools"
TIDEBASE_AGENTS_HANDOFFS: Final = "tidebase.agents.agent.handoffs"
TIDEBASE_AGENTS_OUTPUT_TYPE: Final = "tidebase.agents.agent.output_type"
TIDEBASE_AGENTS_TURN: Final = "tidebase.agents.turn"
TIDEBASE_AGENTS_HANDOFF_FROM: Final = "tidebase.agents.handoff.from_agent"
TIDEBASE_AGENTS_HANDOFF_TO: Final = "tidebase.agents.handoff.to_agent"
TIDEBASE_AGENTS_GUARDRAIL_NAME: Final = "tidebase.agents.guardrail.name"
TIDEBASE_AGENTS_GUARDRAIL_TRIGGERED: Final = "tidebase.agents.guardrail.triggered"
TIDEBASE_AGENTS_CUSTOM_NAME: Final = "tidebase.agents.custom.name"
TIDEBASE_AGENTS_CUSTOM_DATA: Final = "tidebase.agents.custom.data"  # content: opt-in only
TIDEBASE_AGENTS_MCP_SERVER: Final = "tidebase.agents.mcp.server"
TIDEBASE_AGENTS_MCP_TOOLS: Final = "tidebase.agents.mcp.tools"
TIDEBASE_AGENTS_USAGE_REQUESTS: Final = "tidebase.agents.usage.requests"
TIDEBASE_AGENTS_AUDIO_INPUT: Final = "tidebase.agents.audio.input_text"  # content: opt-in only
TIDEBASE_AGENTS_AUDIO_OUTPUT: Final = "tidebase.agents.audio.output_text"  # content: opt-in only
TIDEBASE_AGENTS_ERROR_MESSAGE: Final = "tidebase.agents.error.message"
# The span was ended by the processor (shutdown or memory cap), not by the Agents SDK.
TIDEBASE_AGENTS_INCOMPLETE: Final = "tidebase.agents.incomplete"

# --------------------------------------------------------------------------------------------
# Span names (formats take keyword arguments; keep them bounded in cardinality)
# --------------------------------------------------------------------------------------------
SPAN_INVOKE_AGENT: Final = "invoke_agent {agent}"
SPAN_EXECUTE_TOOL: Final = "execute_tool {tool}"
SPAN_CHAT: Final = "chat {model}"
SPAN_CHAT_NO_MODEL: Final = "chat"
SPAN_INVOKE_WORKFLOW: Final = "invoke_workflow {workflow}"
SPAN_HANDOFF: Final = "handoff {from_agent} -> {to_agent}"
SPAN_GUARDRAIL: Final = "guardrail {name}"
SPAN_TURN: Final = "turn {turn}"
SPAN_TURN_OVERFLOW: Final = "turn >{max_turn}"
SPAN_TURN_NAME_MAX: Final = 100  # turns above this share one span name
SPAN_CUSTOM_DEFAULT: Final = "custom"
SPAN_MCP_LIST_TOOLS: Final = "tools/list {server}"
SPAN_MCP_LIST_TOOLS_NO_SERVER: Final = "tools/list"
SPAN_TRANSCRIPTION: Final = "transcription {model}"
SPAN_TRANSCRIPTION_NO_MODEL: Final = "transcription"
SPAN_SPEECH: Final = "speech {model}"
SPAN_SPEECH_NO_MODEL: Final = "speech"
SPAN_SPEECH_GROUP: Final = "speech_group"
SPAN_UNKNOWN_AGENT: Final = "unknown"  # placeholder for a missing agent / tool name

# Tidebase run / step spans (used by the run/step instrumentation).
SPAN_RUN: Final = "run {workflow}"
SPAN_STEP: Final = "step {step}"

# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
METRIC_GEN_AI_CLIENT_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # histogram, {token}
METRIC_GEN_AI_CLIENT_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"  # s
UNIT_TOKEN: Final = "{token}"
UNIT_SECONDS: Final = "s"
UNIT_USD: Final = "USD"
UNIT_STEP: Final = "{step}"
UNIT_RUN: Final = "{run}"
UNIT_DELIVERY: Final = "{delivery}"

# Tidebase counters (summable by dashboards; low-cardinality attributes only).
METRIC_TIDEBASE_TOKENS: Final = "tidebase.usage.tokens"
METRIC_TIDEBASE_COST: Final = "tidebase.usage.cost"
METRIC_TIDEBASE_STEPS: Final = "tidebase.steps"
METRIC_TIDEBASE_RUNS: Final = "tidebase.runs"
METRIC_TIDEBASE_STEP_DURATION: Final = "tidebase.step.duration"
METRIC_TIDEBASE_REPLAY_COST_AVOIDED: Final = "tidebase.replay.cost_avoided"
METRIC_TIDEBASE_REPLAY_TOKENS_AVOIDED: Final = "tidebase.replay.tokens_avoided"

# Bucket boundaries advised by the GenAI conventions for gen_ai.client.token.usage.
TOKEN_USAGE_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# Step durations range from microseconds (a replay-free pure step) to many minutes (agents).
STEP_DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0,
)  # fmt: skip

# gen_ai.operation.name for a ledger record, by its `kind` (records of other kinds that carry
# tokens use their kind as the operation name).
OPERATION_FOR_USAGE_KIND: Final = {
    "llm": OP_CHAT,
    "chat": OP_CHAT,
    "embedding": "embeddings",
    "embeddings": "embeddings",
}
# gen_ai.provider.name / gen_ai.request.model when a ledger record names none.
UNKNOWN_VALUE: Final = "unknown"

# --------------------------------------------------------------------------------------------
# Queues, cancellation and recovery webhooks (tidebase_otel.queue)
# --------------------------------------------------------------------------------------------
TIDEBASE_QUEUE_NAME: Final = "tidebase.queue.name"
TIDEBASE_QUEUE_DEDUPE_KEY: Final = "tidebase.queue.dedupe_key"
TIDEBASE_QUEUE_DEDUPLICATED: Final = "tidebase.queue.deduplicated"
TIDEBASE_QUEUE_PRIORITY: Final = "tidebase.queue.priority"
TIDEBASE_QUEUE_MAX_ATTEMPTS: Final = "tidebase.queue.max_attempts"
TIDEBASE_QUEUE_WAIT_S: Final = "tidebase.queue.wait_s"
TIDEBASE_QUEUE_OUTCOME: Final = "tidebase.queue.outcome"
TIDEBASE_CANCEL_REASON: Final = "tidebase.cancel.reason"
TIDEBASE_CANCEL_ACTOR: Final = "tidebase.cancel.actor"
TIDEBASE_CANCEL_OUTCOME: Final = "tidebase.cancel.outcome"
TIDEBASE_RECOVERY_REASON: Final = "tidebase.recovery.reason"
TIDEBASE_RECOVERY_TRY: Final = "tidebase.recovery.try"
TIDEBASE_RECOVERY_OUTCOME: Final = "tidebase.recovery.outcome"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
LINK_ENQUEUED_BY: Final = "enqueued_by"  # process span -> the enqueue span of its run

SPAN_ENQUEUE: Final = "enqueue {queue}"
SPAN_PROCESS: Final = "process {queue}"
SPAN_CANCEL: Final = "cancel run"
SPAN_RECOVERY: Final = "recovery {workflow}"

METRIC_QUEUE_WAIT: Final = "tidebase.queue.wait_time"
METRIC_QUEUE_CLAIMS: Final = "tidebase.queue.claims"
METRIC_QUEUE_RETRIES: Final = "tidebase.queue.retries"
METRIC_QUEUE_ENQUEUED: Final = "tidebase.queue.enqueued"
METRIC_CANCELLATIONS: Final = "tidebase.run.cancellations"
METRIC_RECOVERIES: Final = "tidebase.recovery.deliveries"
QUEUE_WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)

# --------------------------------------------------------------------------------------------
# Usage ledger records written by record_agents_usage=True
# --------------------------------------------------------------------------------------------
LEDGER_KIND_LLM: Final = "llm"
LEDGER_LABEL_AGENTS: Final = "openai-agents"
LEDGER_KEY_AGENTS: Final = "agents:{trace_id}:{span_id}"  # idempotency key per model call

# --------------------------------------------------------------------------------------------
# Tidebase environment variables
# --------------------------------------------------------------------------------------------
ENV_PRICES: Final = "TIDEBASE_PRICES"  # JSON price table, see tidebase_otel.prices
ENV_RECORD_AGENTS_USAGE: Final = "TIDEBASE_OTEL_RECORD_AGENTS_USAGE"  # true/false
