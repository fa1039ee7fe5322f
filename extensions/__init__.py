"""Extensions (installed as gotel.extensions): started before every pipeline component, stopped after
them, looked up by id (e.g. an exporter's ``sending_queue.storage: file_storage``)."""
