use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use super::JobError;

/// Shared application state a job asks for by type: a database pool, an HTTP client.
///
/// Register the value once with `RuntimeBuilder::state`; every job with a `State<T>`
/// parameter gets a cheap clone of the same `Arc<T>`. A job asking for a type nobody
/// registered is refused at startup.
///
/// Like axum's `State`, it can be destructured in the parameter list:
/// `State(db): State<Db>` binds `db: Arc<Db>`. Otherwise it dereferences to `T`; note that
/// `state.0` is the `Arc`, so reach a tuple struct's own field as `state.0.0`.
pub struct State<T: ?Sized>(pub Arc<T>);

impl<T: ?Sized> State<T> {
    /// Wraps a value, for calling a job function directly in a test.
    pub fn new(value: T) -> Self
    where
        T: Sized,
    {
        State(Arc::new(value))
    }
}

impl<T: ?Sized> Clone for State<T> {
    fn clone(&self) -> Self {
        State(Arc::clone(&self.0))
    }
}

impl<T: ?Sized> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for State<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// State values by type.
#[derive(Clone, Default)]
pub struct StateMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for StateMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMap").field("len", &self.values.len()).finish()
    }
}

impl StateMap {
    /// Adds or replaces the value of type `T`.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// Adds or replaces the value of type `T`, already in an `Arc`.
    pub fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    /// The value of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        let any = Arc::clone(self.values.get(&TypeId::of::<T>())?);
        any.downcast::<T>().ok().map(State)
    }

    /// Whether a value of this type is present.
    pub fn contains(&self, type_id: TypeId) -> bool {
        self.values.contains_key(&type_id)
    }
}

/// A job parameter filled from the [`StateMap`]. Implemented for [`State<T>`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a state parameter",
    label = "state parameters are written `State<T>`"
)]
pub trait FromStateMap: Sized {
    /// `TypeId` of the value looked up.
    fn type_id() -> TypeId;
    /// Name of the value's type, for error messages.
    fn type_name() -> &'static str;
    /// Looks the value up.
    fn from_state_map(states: &StateMap) -> Result<Self, JobError>;
}

impl<T: Send + Sync + 'static> FromStateMap for State<T> {
    fn type_id() -> TypeId {
        TypeId::of::<T>()
    }

    fn type_name() -> &'static str {
        std::any::type_name::<T>()
    }

    fn from_state_map(states: &StateMap) -> Result<Self, JobError> {
        // The runtime checks every job's state at startup, so this only fails for a job
        // run outside a runtime; it is still an error, never a panic.
        states.get::<T>().ok_or_else(|| {
            JobError::fatal(format!("no `{}` state registered on the runtime", std::any::type_name::<T>()))
        })
    }
}
