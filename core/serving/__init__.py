"""The prediction server (`opsloop serve`): Open Inference Protocol over a real ASGI server."""
