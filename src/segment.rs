//! The Segment-spec message model: identify, track and group, as Personas emits them and `send` reads them.
