//! Poll groups over non-blocking TCP sockets.
