//! The callbridge voice agent (see `providers` for the vendor interfaces).

pub mod providers;
