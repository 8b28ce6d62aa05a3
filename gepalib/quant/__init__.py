"""int6 quantization (GPTQ-lite), the pickle-free artifact container and its entropy coder."""
