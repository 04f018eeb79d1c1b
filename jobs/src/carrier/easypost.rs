//! EasyPost-style carrier adapter.
