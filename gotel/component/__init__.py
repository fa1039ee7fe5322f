"""The component contract every receiver, processor, exporter, connector and extension implements: ids, factories, lifecycle, the plugin registry."""
