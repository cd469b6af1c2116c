"""memwall in the profiler slots of the frameworks people train with (optional extras):

* `memwall_plugin.integrations.lightning.MemwallProfiler`: `Trainer(profiler=MemwallProfiler(...))`
  (PyTorch Lightning, `pip install memwall-plugin[lightning]`);
* `memwall_plugin.integrations.transformers.MemwallCallback`: `Trainer(callbacks=[MemwallCallback()])`
  (Hugging Face transformers).

Each records the framework's training steps (a step is an optimizer step: gradient accumulation's
micro-batches are inside it) into a logdir the Memory Wall tab reads, and prints the summary on
rank zero, as `memwall.profile` does.
"""
