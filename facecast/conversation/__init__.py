"""FULL mode: the server holds the conversation, on Pipecat's pipeline.

The user's microphone (the session's WebRTC audio track) → Silero VAD → PocketSphinx speech recognition →
Pipecat's context aggregation and turn taking → an OpenAI-compatible LLM → espeak-ng speech with its phone
timings → the session's avatar on the live core. Commands and events follow LiveAvatar's FULL mode
(`agent-control` / `agent-response`, facecast.conversation.events). Needs the `full` extra (pipecat-ai
with silero and openai); nothing here is imported unless a FULL session runs."""
