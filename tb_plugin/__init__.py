"""The Memory Wall tab for TensorBoard (installed as `memwall_plugin.tb_plugin`)."""
