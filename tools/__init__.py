"""Developer tools, not shipped in the service image: the local mesh runner (make run)
with its embedded Redis/Kafka and Envoy gateway, the development model upstream (a
stand-in), proto generation, the compose checker and the settings-table generator."""
