"""What several services share: settings, the metric model and its validation, the bus,
the storage schema with its writer and reader, and the embedded servers."""
