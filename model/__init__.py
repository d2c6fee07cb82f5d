"""FLUX.1 Kontext [dev] in plain torch: no HTTP, no queues.

Public surface: `model.config` (`TransformerConfig`, presets), `model.pipeline` (`load`, `KontextPipeline` with
`prepare` / `denoise_step` / `decode` for a scheduler and `generate` for one request, `GenerationRequest`).
"""
