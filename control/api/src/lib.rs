//! JSON-RPC request and response types shared by gyred and gyrectl.
