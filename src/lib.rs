pub use ferrovene_models as models;
