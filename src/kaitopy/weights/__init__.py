"""kaitopy.weights: model weights as files (built from a packaged GGUF) and as OCI artifacts
(pushed to and pulled from a registry), for presets whose weights do not come from Hugging Face."""
