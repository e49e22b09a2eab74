"""Fleet rollouts over MQTT: signed plans, waves and gates, the controller and the device agent, and their
message engine (``topics``, ``broker``, ``transport``)."""
