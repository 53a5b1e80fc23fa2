//! TODO stub
