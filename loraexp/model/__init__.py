"""Layer 5, the model: loading a base by alias, Hub id, folder or GGUF (:mod:`.load`, :mod:`.gguf`),
target-module presets and the one ``peft.LoraConfig`` builder (:mod:`.target_modules`), saved
adapters (:mod:`.adapters`), and quantization (:mod:`.quantization`)."""
