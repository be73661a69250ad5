"""The doors to the streams: the page's WebSocket, WHIP ingest, WHEP egress and the pages themselves."""
