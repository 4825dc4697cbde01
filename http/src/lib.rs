//! coppice-http
