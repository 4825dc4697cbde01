//! coppice-tools
